"""pix2pix (Isola et al. 2017): paired translation A -> B with a conditional PatchGAN and an L1 term.

Data: ``data.source`` is a ``paired`` dataset (data/paired.py: a manifest, or two folders matched by
file name), whose items stack the A image and its B partner as two channels, so crops and flips
keep them aligned. Networks: ``g_ab`` (``model.generator``, ``unet`` by default) and ``d_b``
(``model.discriminator``, ``patchgan``, fed A and B stacked: ``channels`` 2 x C, the reference's
conditional D). No history buffer (as the reference).

One iteration = one step, the reference's order: the discriminator on (A, B) vs (A, G(A)) with the
D loss halved, then the generator on the adversarial loss plus ``l1_weight`` (100) x ||G(A) - B||_1;
``loss_d``, ``loss_g_adv`` and ``l1`` are logged separately. The config must set the loss: ``nonsaturating``
is the reference's 'vanilla' BCE; breastgan's ``lsgan`` already halves its D loss, so no extra half
is applied under it. Learning-rate schedule, init and crops as in recipe ``cyclegan``.

Outputs use the generator in eval mode (batch-norm running statistics, no dropout); the reference's
test script keeps train mode unless ``--eval`` is given.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from breastgan.config import ConfigError
from breastgan.data.base import build_dataset
from breastgan.losses import LOSSES, AdversarialLoss, TermInputs
from breastgan.losses.translation_terms import Pix2PixL1Term
from breastgan.models.registry import DISCRIMINATORS, GENERATORS
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.augment import random_flips
from breastgan.training.recipes.base import RECIPES, OptimizerSpec, Recipe, RecipeArgs, SchedulerSpec, StepOutput, StreamSpec, render_in_eval
from breastgan.training.recipes.cyclegan import init_normal, random_crops, step_lambda, translator_size_multiple, translator_spec


class Pix2PixArgs(RecipeArgs):
    l1_weight: float = Field(100.0, ge=0, description="L1 to the paired target (reference: 100)")
    epochs_constant: int = Field(100, ge=0, description="epochs at the initial learning rate")
    epochs_decay: int = Field(100, ge=0, description="epochs of linear decay")
    crop: int | None = Field(None, ge=4, description="train on random crops of this side (the same crop for A and B)")
    init_std: float = Field(0.02, gt=0, description="N(0, std) initialisation (reference: 0.02)")


@RECIPES.register("pix2pix", args=Pix2PixArgs, summary="pix2pix: paired A->B translation, U-Net + conditional PatchGAN, L1 weight 100")
class Pix2PixRecipe(Recipe):
    kind = "translation"
    default_loss = "nonsaturating"  # the reference's 'vanilla' GAN loss (BCE with logits)

    def __init__(self, cfg, args: Pix2PixArgs, env):
        super().__init__(cfg, args, env)
        src = cfg.data.source
        self.dataset = build_dataset(src.component, src.args)
        info = self.dataset.info
        if src.component != "paired" or info.channels % 2:
            raise ConfigError(f"data.source: recipe 'pix2pix' needs a 'paired' dataset (A and B stacked), got {src.component!r} "
                              f"with {info.channels} channel(s)")
        self.channels = info.channels // 2
        m = cfg.model
        self.g_spec = translator_spec("pix2pix", m.generator, self.channels, "model.generator", True)
        self.d_spec = translator_spec("pix2pix", m.discriminator, 2 * self.channels, "model.discriminator", False)
        self.size_multiple = translator_size_multiple(*self.g_spec)
        h, w = (args.crop, args.crop) if args.crop else info.image_size
        if args.crop and (args.crop > info.image_size[0] or args.crop > info.image_size[1]):
            raise ConfigError(f"recipe.crop {args.crop} is larger than the pairs ({info.image_size[0]}x{info.image_size[1]})")
        if h % self.size_multiple or w % self.size_multiple:
            raise ConfigError(f"data.source: training images are {h}x{w}, but {self.g_spec[0]} needs sides that are multiples of "
                              f"{self.size_multiple} (set recipe.crop or model.generator.depth)")
        self.loss_name = cfg.loss.name
        self.loss: AdversarialLoss = LOSSES.build(self.loss_name, cfg.loss.args)
        if cfg.loss.terms:
            raise ConfigError("loss.terms: recipe 'pix2pix' sets its L1 term from recipe.l1_weight")
        self.d_scale = 1.0 if self.loss_name == "lsgan" else 0.5
        self.l1 = Pix2PixL1Term(args.l1_weight) if args.l1_weight else None

    def build_modules(self) -> dict[str, nn.Module]:
        std = self.args.init_std
        return {"g_ab": init_normal(GENERATORS.get(self.g_spec[0])(**self.g_spec[1]), std),
                "d_b": init_normal(DISCRIMINATORS.get(self.d_spec[0])(**self.d_spec[1]), std)}

    def arch_args(self):
        return {"g_ab": self.g_spec, "d_b": self.d_spec}

    def ddp_modules(self) -> list[str]:
        return ["g_ab", "d_b"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        o = self.cfg.optim
        return {"g": OptimizerSpec(("g_ab",), lambda p: torch.optim.Adam(p, lr=o.lr_g, betas=o.betas)),
                "d": OptimizerSpec(("d_b",), lambda p: torch.optim.Adam(p, lr=o.lr_d, betas=o.betas))}

    def schedulers(self) -> dict[str, SchedulerSpec]:
        rule = step_lambda(self.env.primary.plan.batches_per_epoch, self.args.epochs_constant, self.args.epochs_decay)
        return {n: SchedulerSpec(n, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, rule)) for n in ("g", "d")}

    def streams(self) -> dict[str, StreamSpec]:
        return {"pairs": StreamSpec(self.dataset, self.cfg.train.batch_size)}

    def train_step(self, env) -> StepOutput:
        s = env.primary
        batch = s.current()
        n = s.plan.global_batch
        u_crop, u_flip = s.plan.rank_slice(env.rand(n, 2)), s.plan.rank_slice(env.rand(n, 2))
        x = random_flips(random_crops(batch.images, u_crop, self.args.crop, "data.source"), u_flip, self.cfg.data.hflip, self.cfg.data.vflip)
        x = env.to_device(x.float() * 2 - 1)
        c = self.channels
        real_a, real_b = x[:, :c], x[:, c:]
        out: dict[str, torch.Tensor] = {}
        G, D = env.train_module("g_ab"), env.train_module("d_b")
        with env.autocast():
            fake_b = G(real_a)
        # 1. discriminator: (A, B) real vs (A, G(A)) fake, halved as the reference
        env.set_trainable("d_b", True)
        with env.autocast():
            d_real = D(torch.cat([real_a, real_b], 1)).float()
            d_fake = D(torch.cat([real_a, fake_b.detach()], 1)).float()
            loss_d = self.d_scale * self.loss.discriminator_loss(d_real, d_fake)
        out["loss_d"] = loss_d.detach()
        env.check_finite(loss_d, "discriminator loss")
        env.step_optimizer("d", loss_d)
        # 2. generator
        env.set_trainable("d_b", False)
        with env.autocast():
            adv = self.loss.generator_loss(env.module("d_b")(torch.cat([real_a, fake_b], 1)).float())
        loss_g = adv
        out["loss_g_adv"] = adv.detach()
        if self.l1 is not None:
            value = self.l1(TermInputs(extra={"fake": fake_b, "target": real_b}), None)
            loss_g = loss_g + self.l1.weight * value
            out[self.l1.log_name] = value.detach()
        out["loss_g"] = loss_g.detach()
        env.check_finite(loss_g, "generator loss")
        env.step_optimizer("g", loss_g)
        env.set_trainable("d_b", True)
        return StepOutput(out, completed_step=True)

    # -- outputs --------------------------------------------------------------------------------------
    def _pairs(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        ds = self.dataset
        idx = torch.randint(0, len(ds), (n,), generator=g) if n > len(ds) else torch.randperm(len(ds), generator=g)[:n]
        return ds.get_batch(idx)[0].float()

    def _apply(self, G: nn.Module, a01: torch.Tensor, batch: int = 16) -> torch.Tensor:
        return render_in_eval(G, a01 * 2 - 1, self.env.device, batch)

    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        return self._apply(modules["g_ab"], self._pairs(n, seed)[:, : self.channels])

    def eval_reference(self):
        from breastgan.data.base import DatasetInfo, TensorDataset

        b = self.dataset.images[:, self.channels :]
        info = DatasetInfo("paired-b", tuple(b.shape[-2:]), self.channels, bit_depth=self.dataset.info.bit_depth)
        return TensorDataset(b, torch.zeros(b.shape[0], dtype=torch.long), info, source="paired-b:" + self.dataset.fingerprint())

    def preview(self, modules) -> torch.Tensor:
        """Rows of 4 (the grid of 16 is 4 wide): A, G(A), B, |G(A) - B| x 4."""
        x = self._pairs(4, self.cfg.train.seed + 7919)
        a, b = x[:, : self.channels], x[:, self.channels :]
        fb = self._apply(modules["g_ab"], a)
        return torch.cat([a, fb, b, ((fb - b).abs() * 4).clamp(0, 1)])

    def model_file(self, arch_args) -> ModelFile:
        arch, args = arch_args["g_ab"]
        info = self.dataset.info
        size = [self.args.crop] * 2 if self.args.crop else list(info.image_size)
        return ModelFile(kind="translation", components={"a2b": ComponentSpec(arch=arch, args=args, module="g_ab")},
                         inputs={"image": {"channels": self.channels, "size_multiple": self.size_multiple}},
                         output={"value_range": [0.0, 1.0], "channels": self.channels, "image_size": size, "bit_depth": info.bit_depth})

    def summary(self) -> dict[str, Any]:
        return {"translation": {"pairs": len(self.dataset), "loss": self.loss_name, "d_loss_scale": self.d_scale}}
