"""Differentially private training of the discriminator (DP-SGD with Opacus), accounted per patient.

Why only D: the generator touches real data only through D's gradients, so a DP discriminator makes
the generator DP by post-processing (Xie et al. 2018, DPGAN; the Opacus DCGAN example).

How a step differs from the ordinary one (``Trainer.d_step``):

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
(``dp_ledger.json``) also counts steps taken after the last checkpoint, so a resume after a crash,
or a roll-back after NaN, adds those steps instead of forgetting them: epsilon is never
under-reported.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from breastgan.utils.atomic import write_json_atomic

if TYPE_CHECKING:
    from breastgan.training.trainer import Trainer

LEDGER_NAME = "dp_ledger.json"
LEDGER_EVERY = 20  # discriminator steps between ledger writes (and at every checkpoint)


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


def make_accountant(kind: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(kind)


def epsilon_of(history: list, delta: float, kind: str) -> float:
    if not history:
        return 0.0
    acc = make_accountant(kind)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


class DPTraining:
    """The DP discriminator step plus its accountant; attached to a :class:`Trainer` by :func:`attach_dp`."""

    def __init__(self, trainer: "Trainer", cfg: Any):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        from breastgan.config import ConfigError

        self.tr, self.cfg = trainer, cfg
        if trainer.ctx.distributed:
            raise ConfigError("train.dp: DP training runs in one process (per-sample clipping and the accountant are not sharded)")
        if trainer.loss.gp_lambda > 0:
            raise ConfigError("train.dp: gradient-penalty losses need second-order per-sample gradients, which Opacus does not "
                              "provide; use loss nonsaturating, hinge or lsgan")
        problems = ModuleValidator.validate(trainer.D, strict=False)
        if problems:
            raise ConfigError("train.dp: the discriminator has layers that mix samples or lack per-sample gradients "
                              f"({'; '.join(str(p) for p in problems[:3])}); set model.discriminator.norm: group | layer | instance")
        self.units, self.unit = patient_units(trainer.dataset, cfg.unit)
        n = len(self.units)
        self.delta = cfg.delta if cfg.delta is not None else 1.0 / (10 * n)
        if self.delta >= 1.0 / n:
            raise ConfigError(f"train.dp.delta: {self.delta:g} must be below 1 / number of {self.unit}s = {1.0 / n:g}")
        self.q = cfg.sample_rate if cfg.sample_rate is not None else min(1.0, trainer.cfg.train.batch_size / n)
        self.expected_real = max(1, round(self.q * n))
        for module in trainer.D.modules():
            if getattr(module, "inplace", False):
                module.inplace = False  # in-place activations break the backward hooks per-sample gradients use
        self.gsm = GradSampleModule(trainer.D, batch_first=True, loss_reduction="sum", strict=True)
        self.gsm.disable_hooks()  # on only inside the DP step: G steps also run D
        self.noise = torch.Generator(device=trainer.device).manual_seed(trainer.cfg.train.seed + 424242)
        self.optimizer = DPOptimizer(trainer.opt_d, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                                     expected_batch_size=2 * self.expected_real, loss_reduction="mean", generator=self.noise)
        self.accountant = make_accountant(cfg.accountant)
        self.ledger = trainer.run_dir / LEDGER_NAME

    # -- the step ------------------------------------------------------------------------------
    def _sample_units(self) -> torch.Tensor:
        tr = self.tr
        chosen = (tr._draw(len(self.units)) < self.q).nonzero().flatten()
        pick = tr._draw(len(chosen))
        idx = [int(self.units[int(c)][int(p * len(self.units[int(c)]))]) for c, p in zip(chosen, pick)]
        return torch.tensor(idx, dtype=torch.long)

    def d_step(self) -> dict[str, torch.Tensor]:
        from breastgan.training.augment import random_flips

        tr = self.tr
        idx = self._sample_units()
        n_real, n_fake = len(idx), self.expected_real
        if hasattr(tr.dataset, "get_batch") and n_real:
            real, real_labels = tr.dataset.get_batch(idx)
        elif n_real:
            real = torch.stack([tr.dataset[int(i)][0] for i in idx])
            real_labels = tr.all_labels[idx]
        else:
            real, real_labels = torch.zeros(0, tr.G.channels, *tr.G.image_size), torch.zeros(0, dtype=torch.long)
        real = random_flips(real, tr._draw(n_real, 2), tr.cfg.data.hflip, tr.cfg.data.vflip) if n_real else real
        real = tr._to_device(real.float() * 2 - 1)
        z = tr._to_device(torch.randn(n_fake, tr.G.latent_dim, generator=tr.rng))
        fake_labels = (torch.rand(n_fake, generator=tr.rng) * tr.num_classes).long().clamp(max=tr.num_classes - 1) if tr.num_classes else None
        targets = tr.loss.real_targets(n_real, tr.rng, torch.device("cpu"))
        u_real, u_fake = tr._aug_draw(n_real), tr._aug_draw(n_fake)
        y_real = tr._to_device(real_labels.long()) if tr.num_classes else None
        y_fake = tr._to_device(fake_labels) if fake_labels is not None else None

        tr.D.requires_grad_(True)
        with torch.no_grad():
            fake = tr.G(z, y_fake)
        x = torch.cat([tr._augment(real, u_real), tr._augment(fake, u_fake)])
        y = torch.cat([y_real, y_fake]) if y_real is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        self.gsm.enable_hooks()
        try:
            scores = self.gsm(x, y).float()
            d_real, d_fake = scores[:n_real], scores[n_real:]
            t = targets.to(scores.device) if targets is not None else None
            # the losses are means over each side; n * mean turns them into per-sample sums, the form
            # per-sample clipping expects (each sample's gradient is its own loss's gradient)
            fake_part = n_fake * tr.loss.discriminator_loss(d_real.detach() if n_real else d_fake.detach()[:1], d_fake, t if n_real else None)
            loss = fake_part
            if n_real:
                loss = loss + n_real * tr.loss.discriminator_loss(d_real, d_fake.detach(), t)
            tr._check_finite(loss, "discriminator loss (DP)")
            with warnings.catch_warnings():
                # real images never require grad; torch notes that the hooks then see outputs only, which is what they need
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
        finally:
            self.gsm.disable_hooks()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(noise_multiplier=self.cfg.noise_multiplier, sample_rate=self.q)
        tr.d_iters += 1
        tr._last_labels_global = fake_labels.cpu() if fake_labels is not None else torch.zeros(n_fake, dtype=torch.long)
        if tr.ctx.is_main and self.steps_accounted % LEDGER_EVERY == 0:
            self._write_ledger()
        with torch.no_grad():
            out = {"loss_d": (loss / (n_real + n_fake)).detach(), "d_fake": d_fake.detach().mean(), "dp_real_batch": torch.tensor(float(n_real))}
            if n_real:
                out["d_real"] = d_real.detach().mean()
            if tr.loss.probabilistic:
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

    def _write_ledger(self) -> None:
        write_json_atomic(self.ledger, {"steps_accounted": self.steps_accounted, "noise_multiplier": self.cfg.noise_multiplier,
                                        "sample_rate": self.q, "epsilon": self.epsilon(), "delta": self.delta, "unit": self.unit})

    def state_dict(self) -> dict[str, Any]:
        if self.tr.ctx.is_main:
            self._write_ledger()
        return {"history": [list(map(float, h[:2])) + [int(h[2])] for h in self.accountant.history],
                "accountant": self.cfg.accountant, "delta": self.delta, "unit": self.unit, "n_units": len(self.units),
                "noise_multiplier": self.cfg.noise_multiplier, "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.q,
                "noise_rng": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Any] | None, where: Path) -> None:
        from breastgan.config import ConfigError

        if self.accountant.history:
            # a roll-back inside this process: the steps since the checkpoint still touched the data,
            # so the accountant keeps them (epsilon never goes down)
            if state:
                self.noise.set_state(state["noise_rng"].cpu())
            return
        if state is None:
            raise ConfigError(f"{where}: resuming with train.dp enabled, but this checkpoint was trained without DP; "
                              "its privacy cost is unbounded, so it cannot be continued as a DP run")
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.noise.set_state(state["noise_rng"].cpu())
        saved = self.steps_accounted
        if self.ledger.is_file():
            ledger = json.loads(self.ledger.read_text())
            lost = int(ledger.get("steps_accounted", 0)) - saved
            if lost > 0:
                # steps after the last checkpoint (then a crash) were taken on the data too: count them
                self.accountant.history.append((float(ledger["noise_multiplier"]), float(ledger["sample_rate"]), lost))


def attach_dp(trainer: "Trainer", cfg: Any) -> DPTraining | None:
    """The trainer's hook: ``None`` (the ordinary, unchanged path) unless ``train.dp.enabled``."""
    if cfg is None or not cfg.enabled:
        return None
    return DPTraining(trainer, cfg)


def read_guarantee(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The DP guarantee of a checkpoint (from its saved accountant), or None for a non-DP checkpoint."""
    from breastgan.training.checkpoint import load_training_state

    state = load_training_state(Path(checkpoint_dir)).get("dp")
    if not state:
        return None
    history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
    eps = epsilon_of(history, float(state["delta"]), state["accountant"])
    return {"epsilon": eps, "delta": float(state["delta"]), "unit": state["unit"],
            "n_units": int(state["n_units"]), "noise_multiplier": float(state["noise_multiplier"]),
            "max_grad_norm": float(state["max_grad_norm"]), "sample_rate": float(state["sample_rate"]),
            "steps": int(sum(h[2] for h in history)), "accountant": state["accountant"]}
