"""The progressive-GAN recipe (``recipe: {name: progan}``): grow G and D from a 5x4 base to the data's size.

Schedule (the reference's ``train.py``): the run starts at ``start_stage`` and trains it on
``train_kimg`` thousand images; every later stage first *fades in* over ``fade_kimg`` thousand
images (alpha 0 -> 1), then trains stably over ``train_kimg``; the last stage trains until
``train.max_steps``. Images shown count the real images D saw (every D iteration), as the
reference's ``cur_nimg``.

Structure state: ``{"stage": s, "phase": "fade" | "stable"}``. Every change of it is a level-of-detail
change: the loop rebuilds G and D (carrying every tensor whose name and shape survive) and gives
them fresh optimisers, which is the reference's Adam reset (twice per stage). Alpha is never
stored: it is recomputed from the images shown (recipe state), so a resume mid-fade is exact, also
with another world size (images shown count the *global* batch).

One iteration is one D update on a batch of real images, downsampled to the stage's size by
average pooling and, while fading, blended with their down-up-sampled version by the same alpha as
G and D (the detail most ports miss). After ``d_iters`` D updates (ramped from 1 to 5 over the
images shown, as the seed needed) G is updated, which completes a step.

Loss: the configured adversarial loss and terms (``wgan-gp`` with ``gp_lambda 10``, ``gp_target 1``,
``drift 0.001``; optionally ``aux_classification`` on D and G for view or any label). Logged per step:
``stage``, ``alpha``, ``kimg``, ``d_iters``, resolution, the loss terms, and separate auxiliary
cross-entropies on reals and fakes; on CUDA also the peak memory of the stage.

GPU path (``train.device: cuda``): ``train.precision: bf16`` autocast (the gradient penalty runs in
fp32, losses/gradient_penalty.py), ``train.channels_last``, TF32 matmuls/convolutions
(``recipe.tf32``) and ``recipe.compile`` (``nn.Module.compile``, parameter names unchanged); all
off on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from breastgan.config import ConfigError
from breastgan.data.base import build_dataset
from breastgan.losses import LOSSES, AdversarialLoss, TermInputs, add_terms, draw_terms, terms_from_loss
from breastgan.models.progan import num_stages, stage_size, upsample
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, resolve_args
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.augment import random_flips
from breastgan.training.recipes.base import RECIPES, GeneratorDiscriminatorPair, Recipe, RecipeArgs, StepOutput, StreamSpec


class ProGANRecipeArgs(RecipeArgs):
    start_stage: int = Field(0, ge=0, description="first stage trained (0: the 5x4 base; 1: 10x8 ...)")
    train_kimg: float | list[float] = Field(600.0, description="thousands of images of stable training per stage (one value, or one per stage)")
    fade_kimg: float | list[float] = Field(600.0, description="thousands of images of fade-in per stage (one value, or one per stage)")
    batch_sizes: list[int] | None = Field(None, description="per-process batch per stage (the last repeats); null: train.batch_size everywhere")
    d_iters: tuple[int, int] = Field((1, 1), description="D updates per G update at the start and at the end of the ramp")
    d_iters_ramp_kimg: tuple[float, float] = Field((0.0, 0.0), description="thousands of images over which d_iters ramps linearly")
    tf32: bool = Field(True, description="CUDA: TF32 matmuls and convolutions")
    compile: bool = Field(False, description="CUDA: torch.compile G and D (nn.Module.compile; checkpoints unchanged)")

    @model_validator(mode="after")
    def _check(self) -> "ProGANRecipeArgs":
        for name in ("train_kimg", "fade_kimg"):
            v = getattr(self, name)
            values = v if isinstance(v, list) else [v]
            if not values or any(x < 0 for x in values):
                raise ValueError(f"{name}: must be >= 0, got {v}")
        if self.batch_sizes is not None and (not self.batch_sizes or any(b < 1 for b in self.batch_sizes)):
            raise ValueError(f"batch_sizes: need positive per-stage batch sizes, got {self.batch_sizes}")
        if min(self.d_iters) < 1:
            raise ValueError(f"d_iters: at least 1 D update per G update, got {self.d_iters}")
        return self


def _per_stage(value: float | list[float], stage: int) -> float:
    if isinstance(value, list):
        return value[min(stage, len(value) - 1)]
    return value


class Schedule:
    """Images shown -> (stage, phase, alpha), as the reference's ``TrainingSchedule`` (integer image counts)."""

    def __init__(self, start: int, stages: int, train_kimg, fade_kimg):
        self.start, self.stages = start, stages
        self.train = [int(round(_per_stage(train_kimg, s) * 1000)) for s in range(stages)]
        self.fade = [int(round(_per_stage(fade_kimg, s) * 1000)) for s in range(stages)]

    def locate(self, nimg: int) -> tuple[int, str, float]:
        t = nimg
        for s in range(self.start, self.stages):
            if s > self.start and self.fade[s] > 0:
                if t < self.fade[s]:
                    return s, "fade", t / self.fade[s]
                t -= self.fade[s]
            if s == self.stages - 1 or t < self.train[s]:
                return s, "stable", 1.0
            t -= self.train[s]
        return self.stages - 1, "stable", 1.0

    def images_to_final(self) -> int:
        """Images shown until the final stage is fully faded in."""
        return sum(self.train[s] for s in range(self.start, self.stages - 1)) + sum(self.fade[s] for s in range(self.start + 1, self.stages))


@RECIPES.register("progan", args=ProGANRecipeArgs, summary="progressive GAN: 5x4 base doubling to the data size, fade-in of G, D and reals, WGAN-GP + drift, optional view head")
class ProGANRecipe(GeneratorDiscriminatorPair, Recipe):
    kind = "noise"

    def __init__(self, cfg, args: ProGANRecipeArgs, env):
        super().__init__(cfg, args, env)
        self.dataset = dataset = build_dataset(cfg.data.source.component, cfg.data.source.args)
        info = dataset.info
        if info.channels != 1:
            raise ConfigError(f"recipe progan: data {info.name!r} has {info.channels} channels; the progressive GAN here makes grey images")
        self.num_classes = info.num_classes if cfg.data.conditional else 0
        if cfg.data.conditional and info.num_classes < 2:
            raise ConfigError(f"data.conditional is true but dataset {info.name!r} has a single class {info.class_names}")
        m = cfg.model
        for where, spec in (("model.generator", m.generator), ("model.discriminator", m.discriminator)):
            if spec.component != "progan":
                raise ConfigError(f"{where}.arch: recipe progan needs arch 'progan', got {spec.component!r}")
            if "stage" in spec.args:
                raise ConfigError(f"{where}.stage: set by the recipe's schedule (recipe.start_stage), not in the model options")
        derived = {"image_size": tuple(info.image_size), "channels": 1, "num_classes": self.num_classes}
        try:
            self.g_args = resolve_args(GENERATORS, "progan", m.generator.args, derived, "model.generator")
            self.d_args = resolve_args(DISCRIMINATORS, "progan", m.discriminator.args, derived, "model.discriminator")
        except ValueError as exc:
            raise ConfigError(f"{exc} (data {info.name!r} is {info.image_size[0]}x{info.image_size[1]})") from None
        if tuple(self.g_args["base_size"]) != tuple(self.d_args["base_size"]):
            raise ConfigError(f"model.generator.base_size {self.g_args['base_size']} != model.discriminator.base_size {self.d_args['base_size']}")
        self.base = tuple(self.g_args["base_size"])
        self.stages = num_stages(self.base, tuple(info.image_size))
        if args.start_stage >= self.stages:
            raise ConfigError(f"recipe.start_stage: {args.start_stage} is beyond the last stage {self.stages - 1} "
                              f"({self.base} -> {tuple(info.image_size)})")
        self.schedule = Schedule(args.start_stage, self.stages, args.train_kimg, args.fade_kimg)
        self.loss: AdversarialLoss = LOSSES.build(cfg.loss.name, cfg.loss.args)
        self.terms = terms_from_loss(self.loss, [t.model_dump() for t in cfg.loss.terms])
        self.use_aux = any(t.needs_aux for t in self.terms)
        if self.use_aux and not self.d_args.get("aux_classifier"):
            raise ConfigError("loss.terms: aux_classification needs model.discriminator.aux_classifier: true")
        if self.d_args.get("aux_classifier") and not self.num_classes:
            raise ConfigError("model.discriminator.aux_classifier: needs data.conditional: true (a label to classify)")
        if cfg.train.augment.policy != "none":
            raise ConfigError("train.augment: recipe progan does not use DiffAugment (set policy: none)")
        if cfg.train.max_steps is None:
            raise ConfigError("train.max_steps: recipe progan needs a step budget (docs/models/progan.md: budgeting a run)")
        if cfg.train.n_critic != 1:
            raise ConfigError("train.n_critic: recipe progan ramps D updates with recipe.d_iters / d_iters_ramp_kimg; leave n_critic at 1")
        # state: images shown (global), D updates since the last G update, labels of the last real batch
        self.nimg = 0
        self.d_done = 0
        self.last_labels_global = torch.zeros(0, dtype=torch.long)
        self.stage, self.phase, _ = self.schedule.locate(0)
        if env.device.type == "cuda" and args.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # -- structure ---------------------------------------------------------------------------------
    def structure(self) -> dict[str, Any]:
        return {"stage": self.stage, "phase": self.phase}

    def set_structure(self, structure: dict[str, Any]) -> None:
        stage, phase = int(structure.get("stage", self.args.start_stage)), str(structure.get("phase", "stable"))
        if not self.args.start_stage <= stage < self.stages or phase not in ("fade", "stable"):
            raise ConfigError(f"progan structure {structure} does not fit this run (stages {self.args.start_stage}..{self.stages - 1})")
        self.stage, self.phase = stage, phase

    def next_structure(self, step: int) -> dict[str, Any] | None:
        stage, phase, _ = self.schedule.locate(self.nimg)
        new = {"stage": stage, "phase": phase}
        return new if new != self.structure() else None

    def batch_size(self) -> int:
        b = self.args.batch_sizes
        return self.cfg.train.batch_size if b is None else b[min(self.stage, len(b) - 1)]

    @property
    def alpha(self) -> float:
        return self.schedule.locate(self.nimg)[2] if self.phase == "fade" else 1.0

    def d_iters(self) -> int:
        (a, b), (k0, k1) = self.args.d_iters, self.args.d_iters_ramp_kimg
        kimg = self.nimg / 1000
        t = 1.0 if k1 <= k0 else min(1.0, max(0.0, (kimg - k0) / (k1 - k0)))
        return int(round(a + (b - a) * t))

    # -- what is trained ---------------------------------------------------------------------------
    def arch_args(self):
        # image_size is what the network at this stage makes / takes (model.json's output size); the final
        # size lives in the schedule, so a checkpoint of any stage rebuilds exactly the network it holds
        # alpha: the fade-in weight a network is built with (null in the stable phase: no blend, no old layer)
        now = {"image_size": self.res, "stage": self.stage, "alpha": self.alpha if self.phase == "fade" and self.stage > 0 else None}
        return {"generator": ("progan", {**self.g_args, **now}), "discriminator": ("progan", {**self.d_args, **now})}

    def build_modules(self) -> dict[str, nn.Module]:
        a = self.arch_args()
        return {"generator": GENERATORS.get("progan")(**a["generator"][1]), "discriminator": DISCRIMINATORS.get("progan")(**a["discriminator"][1])}

    def streams(self) -> dict[str, StreamSpec]:
        return {"real": StreamSpec(self.dataset, self.batch_size())}

    def on_built(self, env) -> None:
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)  # peak memory is reported per structure (stage and phase)
            if self.args.compile:
                for m in env.modules.values():
                    m.compile()

    # -- the step ------------------------------------------------------------------------------------
    @property
    def res(self) -> tuple[int, int]:
        return stage_size(self.base, self.stage)

    def real_at_stage(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """Full-size reals -> the stage's size (average pooling); while fading, blended with their down-up-sampled version."""
        h, _ = self.res
        factor = x.shape[-2] // h
        if factor > 1:
            x = F.avg_pool2d(x, factor)
        if self.phase == "fade" and self.stage > 0:
            x = torch.lerp(upsample(F.avg_pool2d(x, 2)), x, alpha)
        return x

    def _set_alpha(self, env, alpha: float) -> None:
        for name in ("generator", "discriminator"):
            m = env.module(name)
            if m.fading:
                m.alpha.fill_(alpha)

    def train_step(self, env) -> StepOutput:
        alpha = self.alpha
        self._set_alpha(env, alpha)
        n_d = self.d_iters()
        out = self.d_step(env, alpha)
        self.nimg += env.global_batch
        self.d_done += 1
        # progress in every iteration: the loop logs the mean over the iterations of a log interval
        h, w = self.res
        progress = {"stage": self.stage, "alpha": alpha, "kimg": self.nimg / 1000, "d_iters": n_d, "res_h": h, "res_w": w}
        out.update({k: torch.tensor(float(v)) for k, v in progress.items()})
        if env.device.type == "cuda":
            out["peak_mem_gib"] = torch.tensor(torch.cuda.max_memory_allocated(env.device) / 2**30)
        if self.d_done < n_d:
            return StepOutput(out, completed_step=False)
        out.update(self.g_step(env))
        self.d_done = 0
        # the buffers hold the schedule's alpha for the images shown so far: the loop's EMA update copies
        # them, and a checkpoint written now regenerates with exactly that weight
        self._set_alpha(env, self.alpha)
        return StepOutput(out, completed_step=True)

    def labels(self, labels_global: torch.Tensor) -> torch.Tensor | None:
        return self.env.local(labels_global) if self.num_classes else None

    def d_step(self, env, alpha: float) -> dict[str, torch.Tensor]:
        B = env.global_batch
        batch = env.batch()
        u = env.primary.plan.rank_slice(env.rand(len(batch.indices_global), 2))
        images = random_flips(batch.images, u, self.cfg.data.hflip, self.cfg.data.vflip).float()
        real = env.to_device(self.real_at_stage(images, alpha) * 2 - 1)
        labels = self.labels(batch.labels_global)
        z = env.local(env.randn(B, self.g_args["latent_dim"]))
        draws = draw_terms(self.terms, "discriminator", env)
        G, D = env.module("generator"), env.train_module("discriminator")
        env.set_trainable("discriminator", True)
        with torch.no_grad(), env.autocast():
            fake = G(z, labels)
        aux_real = aux_fake = None
        with env.autocast():
            if self.use_aux:
                d_real, aux_real = D(real, labels, return_aux=True)
                d_fake, aux_fake = D(fake, labels, return_aux=True)
            else:
                d_real, d_fake = D(real, labels), D(fake, labels)
            loss = self.loss.discriminator_loss(d_real.float(), d_fake.float(), None)
        out = {"loss_d": loss.detach(), "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
        if self.use_aux:
            # the seed's Figure 4: label cross-entropy on real and on generated images, each on its own
            out["aux_ce_real"] = F.cross_entropy(aux_real.detach().float(), labels)
            out["aux_ce_fake"] = F.cross_entropy(aux_fake.detach().float(), labels)
        inputs = TermInputs(real=real, fake=fake, d_real=d_real, d_fake=d_fake, labels=labels, labels_fake=labels,
                            aux_real=aux_real, aux_fake=aux_fake, critic=lambda x, y: D(x, y))
        loss = add_terms(self.terms, "discriminator", loss, inputs, draws, out)
        env.check_finite(loss, "discriminator loss")
        env.step_optimizer("discriminator", loss)
        self.last_labels_global = batch.labels_global
        return out

    def g_step(self, env) -> dict[str, torch.Tensor]:
        B = env.global_batch
        labels = self.labels(self.last_labels_global)
        z = env.local(env.randn(B, self.g_args["latent_dim"]))
        draws = draw_terms(self.terms, "generator", env)
        D = env.module("discriminator")  # plain module: frozen here, an unused DDP forward would stall its reducer
        env.set_trainable("discriminator", False)
        out: dict[str, torch.Tensor] = {}
        with env.autocast():
            fake = env.train_module("generator")(z, labels)
            if self.use_aux:
                scores, aux = D(fake, labels, return_aux=True)
            else:
                scores, aux = D(fake, labels), None
            loss = self.loss.generator_loss(scores.float())
        out["loss_g"] = loss.detach()
        loss = add_terms(self.terms, "generator", loss, TermInputs(fake=fake, d_fake=scores, labels=labels, labels_fake=labels, aux_fake=aux), draws, out)
        env.check_finite(loss, "generator loss")
        env.step_optimizer("generator", loss)
        env.set_trainable("discriminator", True)
        return out

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"nimg": self.nimg, "d_done": self.d_done, "last_labels_global": self.last_labels_global}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nimg, self.d_done = int(state["nimg"]), int(state["d_done"])
        self.last_labels_global = state["last_labels_global"].cpu()

    def summary(self) -> dict[str, Any]:
        h, w = self.res
        return {"progan": {"stage": self.stage, "phase": self.phase, "alpha": self.alpha, "resolution": [h, w], "kimg": self.nimg / 1000,
                           "images_to_final_stage": self.schedule.images_to_final()}}

    # -- outputs ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, full_size: bool, batch: int = 64) -> torch.Tensor:
        out = []
        h = self.dataset.info.image_size[0]
        for i in range(0, z.shape[0], batch):
            lab = labels[i : i + batch].to(self.env.device) if labels is not None else None
            x = ((G(z[i : i + batch].to(self.env.device), lab).float().clamp(-1, 1) + 1) / 2).cpu()
            if full_size and x.shape[-2] != h:
                # in-training metrics compare at the data's size, as the reference (its G always outputs full size)
                x = F.interpolate(x, scale_factor=h // x.shape[-2], mode="nearest")
            out.append(x)
        return torch.cat(out)

    def _latents(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.g_args["latent_dim"], generator=g)
        labels = torch.randint(0, self.num_classes, (n,), generator=g) if self.num_classes else None
        return z, labels

    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        """At the data's size (nearest-upsampled from the current stage): what in-training SWD compares."""
        z, labels = self._latents(n, seed)
        return self.generate(modules["generator"], z, labels, full_size=True)

    def preview(self, modules) -> torch.Tensor:
        """The sample grid at the current stage's own resolution (periodic artefacts show at their scale)."""
        t = self.cfg.train
        z = torch.randn(t.grid_size, self.g_args["latent_dim"], generator=torch.Generator().manual_seed(t.seed + 7919))
        labels = torch.arange(t.grid_size) % self.num_classes if self.num_classes else None
        return self.generate(modules["generator"], z, labels, full_size=False)

    def model_file(self, arch_args) -> ModelFile:
        info = self.dataset.info
        arch, args = arch_args["generator"]
        h, w = stage_size(tuple(args["base_size"]), int(args["stage"]))
        return ModelFile(
            kind="noise", components={"generator": ComponentSpec(arch=arch, args=args, module="generator")},
            inputs={"latent": {"dim": int(args["latent_dim"]), "distribution": "standard_normal"}},
            output={"value_range": [0.0, 1.0], "channels": 1, "image_size": [h, w], "bit_depth": info.bit_depth,
                    "final_image_size": list(info.image_size)},
            class_names=list(info.class_names) if self.num_classes else [],
        )


def steps_for_schedule(schedule: Schedule, batch_sizes: list[int], world_size: int, d_iters: int = 1) -> int:
    """Generator steps until the final stage is faded in (constant ``d_iters``): for budgeting ``train.max_steps``."""
    steps, nimg = 0, 0
    target = schedule.images_to_final()
    while nimg < target:
        stage = schedule.locate(nimg)[0]
        nimg += batch_sizes[min(stage, len(batch_sizes) - 1)] * world_size * d_iters
        steps += 1
    return steps


__all__ = ["ProGANRecipe", "ProGANRecipeArgs", "Schedule", "steps_for_schedule"]
