"""The GAN recipe: one generator, one discriminator, noise in, image out.

Covers DCGAN / WGAN-GP / conditional (projection or concat) / LSGAN / hinge / minimax with
DiffAugment, one-sided label smoothing, ``n_critic`` discriminator updates per generator update,
loss terms (gradient penalty, drift, auxiliary classification), an EMA generator, snapshots (the
loop's) and DP-SGD as an alternative discriminator phase (``training/dp.py``).

One iteration = one discriminator update on the primary stream's batch; every ``n_critic``-th
iteration also updates the generator, which completes a *step*. The order of random draws
(flips, latents, smoothing targets, augmentation, term draws) is fixed: it is what makes runs
bit-identical across resumes and world sizes, and equal to breastgan 0.1's trainer (golden test).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from breastgan.config import ConfigError
from breastgan.data.base import build_dataset
from breastgan.losses import LOSSES, AdversarialLoss, TermInputs, add_terms, draw_terms, terms_from_loss
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, resolve_args
from breastgan.registry import NoArgs
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.augment import DiffAugment, random_flips
from breastgan.training.recipes.base import RECIPES, GeneratorDiscriminatorPair, Recipe, StepOutput, StreamSpec


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1  # datasets give [0, 1]; generators end in tanh


@RECIPES.register("gan", args=NoArgs, summary="one generator vs one discriminator (DCGAN, WGAN-GP, conditional, LSGAN, hinge; DP-SGD D)")
class GANRecipe(GeneratorDiscriminatorPair, Recipe):
    kind = "noise"

    def __init__(self, cfg, args, env):
        super().__init__(cfg, args, env)
        self.dataset = dataset = build_dataset(cfg.data.source.component, cfg.data.source.args)
        info = dataset.info
        self.num_classes = info.num_classes if cfg.data.conditional else 0
        if cfg.data.conditional and info.num_classes < 2:
            raise ConfigError(f"data.conditional is true but dataset {info.name!r} has a single class {info.class_names}")
        derived_size: Any = info.image_size if info.image_size[0] != info.image_size[1] else info.image_size[0]
        derived = {"image_size": derived_size, "channels": info.channels, "num_classes": self.num_classes}
        m = cfg.model
        self.g_spec = (m.generator.component, resolve_args(GENERATORS, m.generator.component, m.generator.args, derived, "model.generator"))
        self.d_spec = (m.discriminator.component, resolve_args(DISCRIMINATORS, m.discriminator.component, m.discriminator.args, derived, "model.discriminator"))
        self.loss: AdversarialLoss = LOSSES.build(cfg.loss.name, cfg.loss.args)
        self.terms = terms_from_loss(self.loss, [t.model_dump() for t in cfg.loss.terms])
        self.use_aux = any(t.needs_aux for t in self.terms)
        if self.use_aux and not self.d_spec[1].get("aux_classifier"):
            raise ConfigError("loss.terms: aux_classification needs model.discriminator.aux_classifier: true")
        t = cfg.train.augment
        self.diffaug = DiffAugment(t.ops, t.translation, t.cutout) if t.policy == "diffaugment" else None
        self.n_critic = cfg.train.n_critic
        self.last_labels_global = torch.zeros(0, dtype=torch.long)
        self.dp = None

    # -- what is trained ---------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        return {"generator": GENERATORS.get(self.g_spec[0])(**self.g_spec[1]),
                "discriminator": DISCRIMINATORS.get(self.d_spec[0])(**self.d_spec[1])}

    def arch_args(self):
        return {"generator": self.g_spec, "discriminator": self.d_spec}

    def streams(self) -> dict[str, StreamSpec]:
        return {"real": StreamSpec(self.dataset, self.cfg.train.batch_size)}

    def on_built(self, env) -> None:
        from breastgan.training.dp import attach_dp  # DP-SGD discriminator phase; None keeps the ordinary one

        self.dp = attach_dp(self, env, self.cfg.train.dp)

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.env.module("generator").latent_dim

    def labels(self, labels_global: torch.Tensor) -> torch.Tensor | None:
        return self.env.local(labels_global) if self.num_classes else None

    def augment(self, x: torch.Tensor, u_local: torch.Tensor | None) -> torch.Tensor:
        if self.diffaug is None or u_local is None:
            return x
        return self.diffaug(x, u_local.to(x.dtype))

    def aug_draw(self, n: int) -> torch.Tensor | None:
        return self.env.rand(n, DiffAugment.N_RANDOM) if self.diffaug is not None else None

    def add_terms(self, phase: str, loss: torch.Tensor, inputs: TermInputs, draws: list, out: dict) -> torch.Tensor:
        return add_terms(self.terms, phase, loss, inputs, draws, out)

    def draw_terms(self, phase: str) -> list:
        return draw_terms(self.terms, phase, self.env)

    # -- the step -----------------------------------------------------------------------------------
    def train_step(self, env) -> StepOutput:
        out = self.dp.d_step(env) if self.dp is not None else self.d_step(env)
        if (env.iteration + 1) % self.n_critic == 0:
            out.update(self.g_step(env))
            return StepOutput(out, completed_step=True)
        return StepOutput(out, completed_step=False)

    def d_step(self, env) -> dict[str, torch.Tensor]:
        B = env.global_batch
        batch = env.batch()
        u = env.primary.plan.rank_slice(env.rand(len(batch.indices_global), 2))
        real = env.to_device(to_model_range(random_flips(batch.images, u, self.cfg.data.hflip, self.cfg.data.vflip).float()))
        labels = self.labels(batch.labels_global)
        z = env.local(env.randn(B, self.latent_dim))
        targets = self.loss.real_targets(B, env.rng, torch.device("cpu"))
        targets = env.local(targets) if targets is not None else None
        u_real, u_fake = self.aug_draw(B), self.aug_draw(B)
        u_real = env.local(u_real) if u_real is not None else None
        u_fake = env.local(u_fake) if u_fake is not None else None
        term_draws = self.draw_terms("discriminator")

        G, D = env.module("generator"), env.train_module("discriminator")
        env.set_trainable("discriminator", True)
        with torch.no_grad(), env.autocast():
            fake = G(z, labels)
        aux_real = aux_fake = None
        with env.autocast():
            if self.use_aux:
                d_real, aux_real = D(self.augment(real, u_real), labels, return_aux=True)
                d_fake, aux_fake = D(self.augment(fake, u_fake), labels, return_aux=True)
            else:
                d_real = D(self.augment(real, u_real), labels)
                d_fake = D(self.augment(fake, u_fake), labels)
            loss = self.loss.discriminator_loss(d_real.float(), d_fake.float(), targets)
        out = {"loss_d": loss.detach(), "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
        if self.loss.probabilistic:
            out["D(x)"] = torch.sigmoid(d_real.detach().float()).mean()
            out["D(G(z))"] = torch.sigmoid(d_fake.detach().float()).mean()
        inputs = TermInputs(real=real, fake=fake, d_real=d_real, d_fake=d_fake, labels=labels, labels_fake=labels,
                            aux_real=aux_real, aux_fake=aux_fake, critic=lambda x, y: D(self.augment(x, u_real), y))
        loss = self.add_terms("discriminator", loss, inputs, term_draws, out)
        env.check_finite(loss, "discriminator loss")
        env.step_optimizer("discriminator", loss)
        self.last_labels_global = batch.labels_global
        return out

    def g_step(self, env) -> dict[str, torch.Tensor]:
        B = env.global_batch
        labels = self.labels(self.last_labels_global)
        z = env.local(env.randn(B, self.latent_dim))
        u = self.aug_draw(B)
        u = env.local(u) if u is not None else None
        term_draws = self.draw_terms("generator")
        # G steps call D's plain module: its parameters are frozen then, and an unused DDP forward
        # would leave its reducer waiting for gradients
        D = env.module("discriminator")
        env.set_trainable("discriminator", False)
        out: dict[str, torch.Tensor] = {}
        with env.autocast():
            fake = env.train_module("generator")(z, labels)
            if self.use_aux:
                scores, aux = D(self.augment(fake, u), labels, return_aux=True)
            else:
                scores, aux = D(self.augment(fake, u), labels), None
            loss = self.loss.generator_loss(scores.float())
        out["loss_g"] = loss.detach()
        loss = self.add_terms("generator", loss, TermInputs(fake=fake, d_fake=scores, labels=labels, labels_fake=labels, aux_fake=aux),
                              term_draws, out)
        env.check_finite(loss, "generator loss")
        env.step_optimizer("generator", loss)
        env.set_trainable("discriminator", True)
        return out

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"last_labels_global": self.last_labels_global, **({"dp": self.dp.state_dict()} if self.dp is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("last_labels_global") is not None and state["last_labels_global"].numel():
            self.last_labels_global = state["last_labels_global"].cpu()
        self._dp_state = state.get("dp")

    def on_restore(self, records: dict[str, Any]) -> None:
        if self.dp is not None:
            self.dp.load_state_dict(getattr(self, "_dp_state", None), records)

    def records(self, force: bool = False) -> dict[str, Any]:
        return self.dp.records(force) if self.dp is not None else {}

    def record_names(self) -> list[str]:
        return self.dp.record_names() if self.dp is not None else []

    def summary(self) -> dict[str, Any]:
        return {"differential_privacy": self.dp.guarantee()} if self.dp is not None else {}

    # -- outputs --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, z.shape[0], batch):
            lab = labels[i : i + batch].to(self.env.device) if labels is not None else None
            out.append(((G(z[i : i + batch].to(self.env.device), lab).float().clamp(-1, 1) + 1) / 2).cpu())
        return torch.cat(out)

    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g)
        labels = torch.randint(0, self.num_classes, (n,), generator=g) if self.num_classes else None
        return self.generate(modules["generator"], z, labels)

    def preview(self, modules) -> torch.Tensor:
        t = self.cfg.train
        z = torch.randn(t.grid_size, self.latent_dim, generator=torch.Generator().manual_seed(t.seed + 7919))
        labels = torch.arange(t.grid_size) % self.num_classes if self.num_classes else None
        return self.generate(modules["generator"], z, labels)

    def model_file(self, arch_args) -> ModelFile:
        info = self.dataset.info
        arch, args = arch_args["generator"]
        class_names = list(info.class_names) if self.num_classes else []
        return ModelFile(
            kind="noise", components={"generator": ComponentSpec(arch=arch, args=args, module="generator")},
            inputs={"latent": {"dim": int(args["latent_dim"]), "distribution": "standard_normal"}},
            output={"value_range": [0.0, 1.0], "channels": info.channels, "image_size": list(info.image_size), "bit_depth": info.bit_depth},
            class_names=class_names,
        )

