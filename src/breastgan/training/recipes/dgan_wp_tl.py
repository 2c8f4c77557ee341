"""The DGAN-WP-TL recipe (methods.md section 7): the GAN recipe plus the seed's schedule and perceptual term.

What it adds to :class:`~breastgan.training.recipes.gan.GANRecipe` (everything else, including the
order of random draws, is the GAN recipe's):

- learning rates x ``lr_decay`` per *epoch* with a floor (seed: x0.995, floor 1e-7) for both
  optimisers. The loop steps schedulers after every completed step, so the factor is a function
  of the step count: epoch = step x n_critic // batches_per_epoch (one step = n_critic batches);
  it is exact across resumes because the scheduler's own step counter is checkpointed.
- ``perceptual_weight``: the generator's perceptual term (losses/perceptual.py) in the
  discriminator's frozen branch, fed with the last discriminator phase's real batch.

The seed's lambda means the gradient-penalty weight in WGAN-GP runs and the perceptual weight in BCE
runs; here they are two keys (``loss.gp_lambda``, ``recipe.perceptual_weight``) and
configs/dgan_wp_tl_study.yaml sets either or both from one sweep axis.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from breastgan.config import ConfigError
from breastgan.losses.perceptual import PerceptualTerm
from breastgan.training.recipes.base import RECIPES, RecipeArgs, SchedulerSpec
from breastgan.training.recipes.gan import GANRecipe


class DGANArgs(RecipeArgs):
    perceptual_weight: float = Field(0.0, ge=0, description="weight of G's perceptual term in D's frozen branch (0 = off)")
    lr_decay: float = Field(0.995, gt=0, le=1, description="learning-rate factor per epoch (seed: 0.995)")
    lr_floor: float = Field(1e-7, ge=0, description="learning rates never fall below this (seed: 1e-7)")


def epoch_decay(lr0: float, decay: float, floor: float, batches_per_epoch, n_critic: int):
    """LambdaLR factor of completed step ``s``: decay ** epoch(s), floored at ``floor / lr0``."""
    min_factor = min(1.0, floor / lr0) if lr0 > 0 else 1.0

    def factor(s: int) -> float:
        if s <= 0:
            return 1.0
        epoch = (s * n_critic) // batches_per_epoch()
        return max(min_factor, decay ** epoch)

    return factor


@RECIPES.register("dgan_wp_tl", args=DGANArgs,
                  summary="DGAN-WP-TL: GAN recipe + lr x0.995/epoch (floor 1e-7) + perceptual term in D's frozen branch")
class DGANWPTLRecipe(GANRecipe):
    def __init__(self, cfg, args, env):
        super().__init__(cfg, args, env)
        self.dgan_args: DGANArgs = args
        if args.perceptual_weight > 0:
            self.terms.append(PerceptualTerm(args.perceptual_weight))
        self._last_real: torch.Tensor | None = None

    def on_built(self, env) -> None:
        super().on_built(env)
        if self.dgan_args.perceptual_weight > 0 and not hasattr(env.module("discriminator"), "branch_features"):
            raise ConfigError(f"recipe.perceptual_weight > 0 needs a discriminator with a frozen branch (arch: dgan_wp_tl); "
                              f"model.discriminator.arch is {self.d_spec[0]!r}")

    def schedulers(self) -> dict[str, SchedulerSpec]:
        a = self.dgan_args

        def spec(name: str) -> SchedulerSpec:
            def factory(opt: torch.optim.Optimizer):
                lr0 = opt.param_groups[0]["lr"]
                f = epoch_decay(lr0, a.lr_decay, a.lr_floor, lambda: self.env.primary.plan.batches_per_epoch, self.n_critic)
                return torch.optim.lr_scheduler.LambdaLR(opt, f)

            return SchedulerSpec(name, factory)

        return {"generator": spec("generator"), "discriminator": spec("discriminator")}

    def add_terms(self, phase: str, loss: torch.Tensor, inputs, draws: list, out: dict) -> torch.Tensor:
        if phase == "discriminator":
            self._last_real = inputs.real.detach()  # the perceptual term's real statistics in the next G phase
        elif self._last_real is not None:
            inputs.real = self._last_real
            inputs.extra["features"] = self.env.module("discriminator").branch_features
        return super().add_terms(phase, loss, inputs, draws, out)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dgan_wp_tl": self.dgan_args.model_dump()}
