"""CycleGAN (Zhu et al. 2017): unpaired translation between domains A and B, four networks, two streams.

Networks: ``g_ab`` (A -> B), ``g_ba`` (B -> A), ``d_a`` (judges domain A: real A vs G_BA(b)) and
``d_b`` (judges domain B: real B vs G_AB(a)); architectures from ``model.generator`` (a translator:
``resnet_generator`` by default) and ``model.discriminator`` (``patchgan``). Data: ``domain_a``
(default ``data.source``) and ``domain_b``, two dataset specs, unpaired, any sizes; the larger is
the primary stream, so an epoch is max(|A|, |B|) images as in the reference.

One iteration is one step and follows the reference's ``optimize_parameters``:

1. generators (one Adam over both): adversarial loss of D_B(G_AB(a)) and D_A(G_BA(b)), cycle L1
   ``cycle_weight`` (10) per direction, identity L1 ``identity_weight x cycle_weight`` (0.5 x 10)
   per direction; each logged on its own (``loss_g_ab``, ``loss_g_ba``, ``cycle_a``, ``cycle_b``,
   ``identity_ab``, ``identity_ba``);
2. discriminators (one Adam over both): real vs a history-buffer image (``pool_size`` 50, per-image
   semantics, training/image_pool.py), ``loss_d_a``, ``loss_d_b``.

The loss is ``loss``; without one the recipe's ``default_loss`` applies (``lsgan``, the reference's least
squares), written into the saved config so a resume keeps it. breastgan's ``lsgan`` halves
the G loss (0.5 (D - 1)^2) where the reference does not; ``g_adv_weight`` (default 2 under lsgan)
makes the sum equal to the reference's. The D loss is halved in both (the reference's 0.5).

Learning rate: constant for ``epochs_constant`` epochs, then linear decay over ``epochs_decay``
epochs with the reference's factor ``1 - max(0, e + 1 - epochs_constant) / (epochs_decay + 1)`` for
0-based epoch e. The loop steps schedulers after every completed step, so the LambdaLR here maps a
step count to its epoch (step // steps per epoch): the factor changes at epoch boundaries exactly.
Init N(0, 0.02) for conv weights (the reference's ``init_weights('normal')``). EMA off by default.

Random draws per step, in this order: crops and flips of A, of B, then the two buffers' draws;
all from the step generator, so kill-and-resume is exact (the buffers are checkpointed).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from breastgan.config import ConfigError
from breastgan.data.base import build_dataset
from breastgan.data.paired import build_domain
from breastgan.losses import LOSSES, AdversarialLoss
from breastgan.losses.translation_terms import CycleTerm, IdentityTerm
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, resolve_args
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.augment import random_flips
from breastgan.training.image_pool import ImagePool
from breastgan.training.recipes.base import RECIPES, OptimizerSpec, Recipe, RecipeArgs, SchedulerSpec, StepOutput, StreamSpec, render_in_eval

TRANSLATION_TAG = "translation"


def linear_decay_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """The reference's LambdaLR rule (epoch_count 1): lr multiplier during 0-based epoch ``epoch``."""
    return 1.0 - max(0, epoch + 1 - epochs_constant) / float(epochs_decay + 1)


def step_lambda(steps_per_epoch: int, epochs_constant: int, epochs_decay: int):
    """LambdaLR lambda of a scheduler stepped after every step: step count -> epoch -> factor."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps per epoch must be >= 1, got {steps_per_epoch}")
    return lambda step: linear_decay_factor(step // steps_per_epoch, epochs_constant, epochs_decay)


@torch.no_grad()
def init_normal(module: nn.Module, std: float = 0.02) -> nn.Module:
    """The reference's init_weights('normal', 0.02): conv weights N(0, std), biases 0, batch-norm weights N(1, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def random_crops(images: torch.Tensor, u: torch.Tensor, side: int | None, where: str) -> torch.Tensor:
    """Per-image random ``side`` x ``side`` crops at offsets given by uniform draws ``u`` (N, 2)."""
    if side is None:
        return images
    h, w = images.shape[-2:]
    if side > h or side > w:
        raise ValueError(f"{where}: crop {side} is larger than the images ({h}x{w})")
    ys = (u[:, 0] * (h - side + 1)).long().clamp(max=h - side)
    xs = (u[:, 1] * (w - side + 1)).long().clamp(max=w - side)
    return torch.stack([im[:, y : y + side, x : x + side] for im, y, x in zip(images, ys.tolist(), xs.tolist())])


def translator_spec(registry_entry_name: str, spec, channels: int, where: str, translator: bool) -> tuple[str, dict[str, Any]]:
    reg = GENERATORS if translator else DISCRIMINATORS
    entry = reg.entry(spec.component)
    if translator and TRANSLATION_TAG not in entry.tags:
        raise ConfigError(f"{where}.arch: {spec.component!r} is not an image-to-image translator; recipe {registry_entry_name!r} "
                          f"needs one of {[e.name for e in GENERATORS if TRANSLATION_TAG in e.tags]}")
    return spec.component, resolve_args(reg, spec.component, spec.args, {"channels": channels}, where)


def translator_size_multiple(arch: str, args: dict[str, Any]) -> int:
    """What side multiple the architecture needs, read from a built instance (U-Net: 2**depth)."""
    with torch.device("meta"):  # no memory, no init: only the attribute is wanted
        return int(getattr(GENERATORS.get(arch)(**args), "size_multiple", 1))


class CycleGANArgs(RecipeArgs):
    domain_a: dict[str, Any] | None = Field(None, description="dataset spec of domain A ({dataset: ..., ...}); default: data.source")
    domain_b: dict[str, Any] = Field(description="dataset spec of domain B (unpaired with A)")
    cycle_weight: float = Field(10.0, ge=0, description="cycle-consistency L1 weight per direction (reference: 10)")
    identity_weight: float = Field(0.5, ge=0, description="identity L1 weight as a fraction of cycle_weight (reference: 0.5)")
    g_adv_weight: float | None = Field(None, gt=0, description="adversarial weight in the G loss; default 2 under lsgan (= the reference's un-halved MSE), else 1")
    pool_size: int = Field(50, ge=0, le=10000, description="history buffer of generated images per discriminator (0: off)")
    pool_p: float = Field(0.5, ge=0, le=1, description="probability of answering with a stored image once the buffer is full")
    epochs_constant: int = Field(100, ge=0, description="epochs at the initial learning rate (reference n_epochs: 100)")
    epochs_decay: int = Field(100, ge=0, description="epochs of linear decay to ~0 (reference n_epochs_decay: 100)")
    crop: int | None = Field(None, ge=4, description="train on random crops of this side (full-frame inference still works)")
    init_std: float = Field(0.02, gt=0, description="N(0, std) initialisation (reference: 0.02)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the generators (0: off, the reference)")

    @model_validator(mode="after")
    def _crop(self) -> "CycleGANArgs":
        if self.crop is not None and self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 (the translators' size multiple), got {self.crop}")
        return self


@RECIPES.register("cyclegan", args=CycleGANArgs, summary="CycleGAN: unpaired A<->B translation, 2 translators + 2 PatchGANs, cycle/identity L1, history buffer")
class CycleGANRecipe(Recipe):
    default_loss = "lsgan"  # the reference's least squares (config.RunConfig fills it in when no loss is given)
    kind = "translation"

    def __init__(self, cfg, args: CycleGANArgs, env):
        super().__init__(cfg, args, env)
        a = args.domain_a
        self.data_a = build_domain(a, "recipe.domain_a") if a is not None else build_dataset(cfg.data.source.component, cfg.data.source.args)
        self.data_b = build_domain(args.domain_b, "recipe.domain_b")
        ca, cb = self.data_a.info.channels, self.data_b.info.channels
        if ca != cb:
            raise ConfigError(f"recipe.domain_a has {ca}-channel images but recipe.domain_b has {cb}; both domains need one channel count")
        self.channels = ca
        m = cfg.model
        self.g_spec = translator_spec("cyclegan", m.generator, ca, "model.generator", True)
        self.d_spec = translator_spec("cyclegan", m.discriminator, ca, "model.discriminator", False)
        loss_name = self.loss_name = cfg.loss.name
        self.loss: AdversarialLoss = LOSSES.build(loss_name, cfg.loss.args)
        if cfg.loss.terms:
            raise ConfigError("loss.terms: recipe 'cyclegan' sets its terms from recipe.cycle_weight / recipe.identity_weight")
        if getattr(self.loss, "gp_lambda", 0.0):
            raise ConfigError(f"loss {loss_name!r}: gradient penalties are not supported by recipe 'cyclegan'")
        self.g_adv = args.g_adv_weight if args.g_adv_weight is not None else (2.0 if loss_name == "lsgan" else 1.0)
        w_idt = args.identity_weight * args.cycle_weight
        self.cycle_terms = [CycleTerm(args.cycle_weight, "a"), CycleTerm(args.cycle_weight, "b")] if args.cycle_weight else []
        self.identity_terms = [IdentityTerm(w_idt, "ab"), IdentityTerm(w_idt, "ba")] if w_idt else []
        self.pool_a, self.pool_b = ImagePool(args.pool_size, args.pool_p), ImagePool(args.pool_size, args.pool_p)
        # the larger domain is the primary stream: an epoch covers max(|A|, |B|) images, as in the reference
        self.primary = "a" if len(self.data_a) >= len(self.data_b) else "b"
        for crop_side, ds, name in ((args.crop, self.data_a, "domain_a"), (args.crop, self.data_b, "domain_b")):
            h, w = ds.info.image_size
            side_h, side_w = (crop_side, crop_side) if crop_side else (h, w)
            if side_h % 4 or side_w % 4:
                raise ConfigError(f"recipe.{name}: images are {h}x{w}; training sides must be multiples of 4 (set recipe.crop)")
            if crop_side and (crop_side > h or crop_side > w):
                raise ConfigError(f"recipe.crop {crop_side} is larger than recipe.{name}'s images ({h}x{w})")

    # -- what is trained ---------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        g, d = GENERATORS.get(self.g_spec[0]), DISCRIMINATORS.get(self.d_spec[0])
        std = self.args.init_std
        return {"g_ab": init_normal(g(**self.g_spec[1]), std), "g_ba": init_normal(g(**self.g_spec[1]), std),
                "d_a": init_normal(d(**self.d_spec[1]), std), "d_b": init_normal(d(**self.d_spec[1]), std)}

    def arch_args(self):
        return {"g_ab": self.g_spec, "g_ba": self.g_spec, "d_a": self.d_spec, "d_b": self.d_spec}

    def ema_modules(self) -> dict[str, float]:
        return {"g_ab": self.args.ema_decay, "g_ba": self.args.ema_decay} if self.args.ema_decay > 0 else {}

    def ddp_modules(self) -> list[str]:
        return ["g_ab", "g_ba", "d_a", "d_b"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        o = self.cfg.optim

        def adam(lr: float):
            return lambda params: torch.optim.Adam(params, lr=lr, betas=o.betas)

        return {"g": OptimizerSpec(("g_ab", "g_ba"), adam(o.lr_g)), "d": OptimizerSpec(("d_a", "d_b"), adam(o.lr_d))}

    def steps_per_epoch(self) -> int:
        return self.env.streams[self.primary].plan.batches_per_epoch

    def schedulers(self) -> dict[str, SchedulerSpec]:
        rule = step_lambda(self.steps_per_epoch(), self.args.epochs_constant, self.args.epochs_decay)
        return {name: SchedulerSpec(name, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, rule)) for name in ("g", "d")}

    def streams(self) -> dict[str, StreamSpec]:
        b = self.cfg.train.batch_size
        s = {"a": StreamSpec(self.data_a, b), "b": StreamSpec(self.data_b, b)}
        return s if self.primary == "a" else {"b": s["b"], "a": s["a"]}

    # -- the step -----------------------------------------------------------------------------------
    def _real(self, env, stream: str) -> torch.Tensor:
        s = env.streams[stream]
        batch = s.current()
        n = s.plan.global_batch
        u_crop = s.plan.rank_slice(env.rand(n, 2))
        u_flip = s.plan.rank_slice(env.rand(n, 2))
        x = random_crops(batch.images, u_crop, self.args.crop, f"recipe.domain_{stream}")
        x = random_flips(x, u_flip, self.cfg.data.hflip, self.cfg.data.vflip)
        return env.to_device(x.float() * 2 - 1)

    def train_step(self, env) -> StepOutput:
        real_a, real_b = self._real(env, "a"), self._real(env, "b")
        draws_a = env.streams["a"].plan.rank_slice(env.rand(env.streams["a"].plan.global_batch, ImagePool.DRAWS_PER_IMAGE))
        draws_b = env.streams["b"].plan.rank_slice(env.rand(env.streams["b"].plan.global_batch, ImagePool.DRAWS_PER_IMAGE))
        out: dict[str, torch.Tensor] = {}

        # 1. generators; the discriminators' parameters are frozen (plain modules, see gan.py)
        for d in ("d_a", "d_b"):
            env.set_trainable(d, False)
        G_ab, G_ba = env.train_module("g_ab"), env.train_module("g_ba")
        D_a, D_b = env.module("d_a"), env.module("d_b")
        with env.autocast():
            fake_b = G_ab(real_a)
            rec_a = G_ba(fake_b)
            fake_a = G_ba(real_b)
            rec_b = G_ab(fake_a)
            adv_ab = self.loss.generator_loss(D_b(fake_b).float())
            adv_ba = self.loss.generator_loss(D_a(fake_a).float())
            extra = {"reconstructed_a": rec_a, "real_a": real_a, "reconstructed_b": rec_b, "real_b": real_b}
            if self.identity_terms:
                extra.update(identity_ab=G_ab(real_b), target_real_ab=real_b, identity_ba=G_ba(real_a), target_real_ba=real_a)
        loss_g = self.g_adv * (adv_ab + adv_ba)
        out["loss_g_ab"], out["loss_g_ba"] = adv_ab.detach(), adv_ba.detach()
        from breastgan.losses import TermInputs, add_terms

        loss_g = add_terms([*self.cycle_terms, *self.identity_terms], "generator", loss_g, TermInputs(extra=extra), None, out)
        out["loss_g"] = loss_g.detach()
        env.check_finite(loss_g, "generator loss")
        env.step_optimizer("g", loss_g)
        for d in ("d_a", "d_b"):
            env.set_trainable(d, True)

        # 2. discriminators against history-buffer images
        pooled_b = self.pool_b.query(fake_b.detach(), draws_a)  # fake_b is made from stream a's batch
        pooled_a = self.pool_a.query(fake_a.detach(), draws_b)
        out["pool_from_buffer"] = torch.tensor(float(self.pool_a.last_from_pool + self.pool_b.last_from_pool)
                                               / max(1, pooled_a.shape[0] + pooled_b.shape[0]))
        Dt_a, Dt_b = env.train_module("d_a"), env.train_module("d_b")
        with env.autocast():
            loss_d_b = self.loss.discriminator_loss(Dt_b(real_b).float(), Dt_b(pooled_b).float())
            loss_d_a = self.loss.discriminator_loss(Dt_a(real_a).float(), Dt_a(pooled_a).float())
        loss_d = loss_d_a + loss_d_b  # separate parameters: the sum's gradients are each D's own
        out["loss_d_a"], out["loss_d_b"] = loss_d_a.detach(), loss_d_b.detach()
        env.check_finite(loss_d, "discriminator loss")
        env.step_optimizer("d", loss_d)
        return StepOutput(out, completed_step=True)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool_a.load_state_dict(state["pool_a"], self.env.device)
        self.pool_b.load_state_dict(state["pool_b"], self.env.device)

    # -- outputs --------------------------------------------------------------------------------------
    def _fixed(self, ds, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(ds), (n,), generator=g) if n > len(ds) else torch.randperm(len(ds), generator=g)[:n]
        if hasattr(ds, "get_batch"):
            return ds.get_batch(idx)[0].float()
        return torch.stack([ds[int(i)][0] for i in idx]).float()

    def _apply(self, G: nn.Module, x01: torch.Tensor, batch: int = 16) -> torch.Tensor:
        return render_in_eval(G, x01 * 2 - 1, self.env.device, batch)

    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        """A -> B translations of ``n`` domain-A images chosen by ``seed`` (compared with domain B in training metrics)."""
        return self._apply(modules["g_ab"], self._fixed(self.data_a, n, seed))

    def eval_reference(self):
        return self.data_b

    def preview(self, modules) -> torch.Tensor:
        """Rows: A, G_AB(A), G_BA(G_AB(A)), B, G_BA(B), G_AB(G_BA(B)), 6 images each (the grid is 6 x 6)."""
        k = 6  # the loop's grid puts ceil(sqrt(36)) = 6 images per row: one row per stage
        seed = self.cfg.train.seed + 7919
        a, b = self._fixed(self.data_a, k, seed), self._fixed(self.data_b, k, seed)
        h = min(a.shape[-2], b.shape[-2]) // 4 * 4
        w = min(a.shape[-1], b.shape[-1]) // 4 * 4
        a, b = a[..., :h, :w], b[..., :h, :w]  # one tile size for the grid
        fb = self._apply(modules["g_ab"], a)
        fa = self._apply(modules["g_ba"], b)
        rows = [a, fb, self._apply(modules["g_ba"], fb), b, fa, self._apply(modules["g_ab"], fa)]
        return torch.cat(rows)

    def model_file(self, arch_args) -> ModelFile:
        arch, args = arch_args["g_ab"]
        size_multiple = translator_size_multiple(arch, args)
        crop = self.args.crop
        size = [crop, crop] if crop else list(self.data_b.info.image_size)
        return ModelFile(
            kind="translation",
            components={"a2b": ComponentSpec(arch=arch, args=args, module="g_ab"), "b2a": ComponentSpec(arch=arch, args=args, module="g_ba")},
            inputs={"image": {"channels": self.channels, "size_multiple": size_multiple}},
            output={"value_range": [0.0, 1.0], "channels": self.channels, "image_size": size,
                    "bit_depth": max(self.data_a.info.bit_depth, self.data_b.info.bit_depth)},
        )

    def summary(self) -> dict[str, Any]:
        return {"translation": {"domain_a": {"name": self.data_a.info.name, "n": len(self.data_a), "fingerprint": self.data_a.fingerprint()},
                                "domain_b": {"name": self.data_b.info.name, "n": len(self.data_b), "fingerprint": self.data_b.fingerprint()},
                                "loss": self.loss_name, "g_adv_weight": self.g_adv, "steps_per_epoch": self.steps_per_epoch()}}
