"""Differentially private training of the discriminator (DP-SGD with Opacus), accounted per patient.

Why only D: the generator touches real data only through D's gradients, so a DP discriminator makes
the generator DP by post-processing (Xie et al. 2018, DPGAN; the Opacus DCGAN example).

How a step differs from the ordinary one (``GANRecipe.d_step``); it is the GAN recipe's alternative
discriminator phase and uses only the step environment:

- sampling: every *patient* (unit) enters the step independently with probability ``q``
  (Poisson sampling, which the accountant's amplification bound assumes), and contributes exactly
  one of their images, drawn at random. One patient therefore influences at most one per-sample
  gradient per step, so per-sample clipping bounds the patient's contribution and the epsilon
  below is a patient-level epsilon. Datasets without patient ids count each image as a unit.
- per-sample gradients of D (Opacus ``GradSampleModule``) for the real and the fake images are
  clipped to ``max_grad_norm`` and summed; Gaussian noise with std ``noise_multiplier *
  max_grad_norm`` is added, and the sum is divided by the *expected* batch size (a data-independent
  constant) by Opacus' ``DPOptimizer``. Fake images carry no private data; they are clipped with the
  rest so that one optimiser step handles both.
- labels for fake images are drawn uniformly (not copied from the private real batch).
- batch norm mixes samples and breaks per-sample clipping: the discriminator must use group,
  layer or instance norm (``model.discriminator.norm``); gradient-penalty losses are refused.

Accounting: Opacus' RDP (or PRV) accountant, one step per discriminator update, with delta below
1 / (number of units). Its history is saved in every checkpoint; a run-level ledger
(``dp_ledger.json``, written by the loop from :meth:`DPTraining.records`) also counts steps taken
after the last checkpoint, so a resume after a crash, or a roll-back after NaN, adds those steps
instead of forgetting them: epsilon is never under-reported.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from breastgan.utils.dp_accounting import epsilon_of, guarantee_from_state, make_accountant

if TYPE_CHECKING:
    from breastgan.training.env import StepEnv
    from breastgan.training.recipes.gan import GANRecipe

LEDGER_NAME = "dp_ledger.json"
LEDGER_EVERY = 20  # discriminator steps between ledger writes (and at every checkpoint)

__all__ = ["DPTraining", "attach_dp", "epsilon_of", "patient_units", "read_guarantee"]


def patient_units(dataset: Any, unit: str) -> tuple[list[torch.Tensor], str]:
    """Indices of each unit's images: per patient when the dataset has patient ids, else per image."""
    rows = getattr(dataset, "rows", None)
    has_ids = bool(rows) and "patient_id" in rows[0] and all(r.get("patient_id") for r in rows)
    if unit == "patient" and not has_ids:
        raise ValueError(f"train.dp.unit: 'patient' needs patient ids, but dataset {dataset.info.name!r} has none; "
                         "use a prepared dataset (its manifest has patient_id) or unit: image")
    if unit == "image" or not has_ids:
        return [torch.tensor([i]) for i in range(len(dataset))], "image"
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["patient_id"], []).append(i)
    return [torch.tensor(v) for _, v in sorted(groups.items())], "patient"


class DPTraining:
    """The DP discriminator phase of the GAN recipe plus its accountant (see the module docstring)."""

    def __init__(self, recipe: "GANRecipe", env: "StepEnv", cfg: Any):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        from breastgan.config import ConfigError

        self.recipe, self.cfg = recipe, cfg
        if env.ctx.distributed:
            raise ConfigError("train.dp: DP training runs in one process (per-sample clipping and the accountant are not sharded)")
        if any(t.log_name == "gp" for t in recipe.terms):
            raise ConfigError("train.dp: gradient-penalty losses need second-order per-sample gradients, which Opacus does not "
                              "provide; use loss nonsaturating, hinge or lsgan")
        D = env.module("discriminator")
        problems = ModuleValidator.validate(D, strict=False)
        if problems:
            raise ConfigError("train.dp: the discriminator has layers that mix samples or lack per-sample gradients "
                              f"({'; '.join(str(p) for p in problems[:3])}); set model.discriminator.norm: group | layer | instance")
        self.units, self.unit = patient_units(recipe.dataset, cfg.unit)
        n = len(self.units)
        self.delta = cfg.delta if cfg.delta is not None else 1.0 / (10 * n)
        if self.delta >= 1.0 / n:
            raise ConfigError(f"train.dp.delta: {self.delta:g} must be below 1 / number of {self.unit}s = {1.0 / n:g}")
        self.q = cfg.sample_rate if cfg.sample_rate is not None else min(1.0, recipe.cfg.train.batch_size / n)
        self.expected_real = max(1, round(self.q * n))
        for module in D.modules():
            if getattr(module, "inplace", False):
                module.inplace = False  # in-place activations break the backward hooks per-sample gradients use
        self.gsm = GradSampleModule(D, batch_first=True, loss_reduction="sum", strict=True)
        self.gsm.disable_hooks()  # on only inside the DP step: G steps also run D
        self.noise = torch.Generator(device=env.device).manual_seed(recipe.cfg.train.seed + 424242)
        self.optimizer = DPOptimizer(env.optimizers["discriminator"], noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                                     expected_batch_size=2 * self.expected_real, loss_reduction="mean", generator=self.noise)
        self.accountant = make_accountant(cfg.accountant)
        self._ledger_due = False

    # -- the step ------------------------------------------------------------------------------
    def _sample_units(self, env: "StepEnv") -> torch.Tensor:
        chosen = (env.rand(len(self.units)) < self.q).nonzero().flatten()
        pick = env.rand(len(chosen))
        idx = [int(self.units[int(c)][int(p * len(self.units[int(c)]))]) for c, p in zip(chosen, pick)]
        return torch.tensor(idx, dtype=torch.long)

    def d_step(self, env: "StepEnv") -> dict[str, torch.Tensor]:
        from breastgan.training.augment import random_flips

        rc = self.recipe
        ds = rc.dataset
        G = env.module("generator")
        idx = self._sample_units(env)
        n_real, n_fake = len(idx), self.expected_real
        if hasattr(ds, "get_batch") and n_real:
            real, real_labels = ds.get_batch(idx)
        elif n_real:
            real = torch.stack([ds[int(i)][0] for i in idx])
            real_labels = env.primary.labels[idx]
        else:
            real, real_labels = torch.zeros(0, G.channels, *G.image_size), torch.zeros(0, dtype=torch.long)
        real = random_flips(real, env.rand(n_real, 2), rc.cfg.data.hflip, rc.cfg.data.vflip) if n_real else real
        real = env.to_device(real.float() * 2 - 1)
        z = env.to_device(env.randn(n_fake, G.latent_dim))
        fake_labels = (env.rand(n_fake) * rc.num_classes).long().clamp(max=rc.num_classes - 1) if rc.num_classes else None
        targets = rc.loss.real_targets(n_real, env.rng, torch.device("cpu"))
        u_real, u_fake = rc.aug_draw(n_real), rc.aug_draw(n_fake)
        u_real = env.to_device(u_real) if u_real is not None else None
        u_fake = env.to_device(u_fake) if u_fake is not None else None
        y_real = env.to_device(real_labels.long()) if rc.num_classes else None
        y_fake = env.to_device(fake_labels) if fake_labels is not None else None

        env.set_trainable("discriminator", True)
        with torch.no_grad():
            fake = G(z, y_fake)
        x = torch.cat([rc.augment(real, u_real), rc.augment(fake, u_fake)])
        y = torch.cat([y_real, y_fake]) if y_real is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        self.gsm.enable_hooks()
        try:
            scores = self.gsm(x, y).float()
            d_real, d_fake = scores[:n_real], scores[n_real:]
            t = targets.to(scores.device) if targets is not None else None
            # the losses are means over each side; n * mean turns them into per-sample sums, the form
            # per-sample clipping expects (each sample's gradient is its own loss's gradient)
            fake_part = n_fake * rc.loss.discriminator_loss(d_real.detach() if n_real else d_fake.detach()[:1], d_fake, t if n_real else None)
            loss = fake_part
            if n_real:
                loss = loss + n_real * rc.loss.discriminator_loss(d_real, d_fake.detach(), t)
            env.check_finite(loss, "discriminator loss (DP)")
            with warnings.catch_warnings():
                # real images never require grad; torch notes that the hooks then see outputs only, which is what they need
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
        finally:
            self.gsm.disable_hooks()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(noise_multiplier=self.cfg.noise_multiplier, sample_rate=self.q)
        rc.last_labels_global = fake_labels.cpu() if fake_labels is not None else torch.zeros(n_fake, dtype=torch.long)
        if self.steps_accounted % LEDGER_EVERY == 0:
            self._ledger_due = True
        with torch.no_grad():
            out = {"loss_d": (loss / (n_real + n_fake)).detach(), "d_fake": d_fake.detach().mean(), "dp_real_batch": torch.tensor(float(n_real))}
            if n_real:
                out["d_real"] = d_real.detach().mean()
            if rc.loss.probabilistic:
                out["D(G(z))"] = torch.sigmoid(d_fake.detach()).mean()
                if n_real:
                    out["D(x)"] = torch.sigmoid(d_real.detach()).mean()
        return out

    # -- accounting ----------------------------------------------------------------------------
    @property
    def steps_accounted(self) -> int:
        return int(sum(h[2] for h in self.accountant.history))

    def epsilon(self) -> float:
        return epsilon_of(self.accountant.history, self.delta, self.cfg.accountant)

    def guarantee(self) -> dict[str, Any]:
        """The manifest's ``differential_privacy`` record (see sharing.manifest.DPGuarantee)."""
        return {"epsilon": self.epsilon(), "delta": self.delta, "unit": self.unit, "n_units": len(self.units),
                "noise_multiplier": self.cfg.noise_multiplier, "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.q,
                "steps": self.steps_accounted, "accountant": self.cfg.accountant}

    def _ledger(self) -> dict[str, Any]:
        return {"steps_accounted": self.steps_accounted, "noise_multiplier": self.cfg.noise_multiplier,
                "sample_rate": self.q, "epsilon": self.epsilon(), "delta": self.delta, "unit": self.unit}

    def records(self, force: bool = False) -> dict[str, Any]:
        """Files the loop should persist now: the ledger every LEDGER_EVERY steps and at checkpoints."""
        if not (force or self._ledger_due):
            return {}
        self._ledger_due = False
        return {LEDGER_NAME: self._ledger()}

    def record_names(self) -> list[str]:
        return [LEDGER_NAME]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(map(float, h[:2])) + [int(h[2])] for h in self.accountant.history],
                "accountant": self.cfg.accountant, "delta": self.delta, "unit": self.unit, "n_units": len(self.units),
                "noise_multiplier": self.cfg.noise_multiplier, "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.q,
                "noise_rng": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Any] | None, records: dict[str, Any]) -> None:
        from breastgan.config import ConfigError

        if self.accountant.history:
            # a roll-back inside this process: the steps since the checkpoint still touched the data,
            # so the accountant keeps them (epsilon never goes down)
            if state:
                self.noise.set_state(state["noise_rng"].cpu())
            return
        if state is None:
            raise ConfigError(f"{records.get('__checkpoint__', 'checkpoint')}: resuming with train.dp enabled, but this checkpoint was "
                              "trained without DP; its privacy cost is unbounded, so it cannot be continued as a DP run")
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.noise.set_state(state["noise_rng"].cpu())
        saved = self.steps_accounted
        ledger = records.get(LEDGER_NAME)
        if ledger:
            lost = int(ledger.get("steps_accounted", 0)) - saved
            if lost > 0:
                # steps after the last checkpoint (then a crash) were taken on the data too: count them
                self.accountant.history.append((float(ledger["noise_multiplier"]), float(ledger["sample_rate"]), lost))


def attach_dp(recipe: "GANRecipe", env: "StepEnv", cfg: Any) -> DPTraining | None:
    """The GAN recipe's hook: ``None`` (the ordinary, unchanged phase) unless ``train.dp.enabled``."""
    if cfg is None or not cfg.enabled:
        return None
    return DPTraining(recipe, env, cfg)


def read_guarantee(checkpoint_dir: Any) -> dict[str, Any] | None:
    """The DP guarantee of a checkpoint (from its saved accountant), or None for a non-DP checkpoint."""
    from breastgan.run_dir import read_dp_guarantee

    return read_dp_guarantee(checkpoint_dir)


