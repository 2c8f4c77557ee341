"""The projected-discriminator recipe: breastgan's faster variant of DGAN-WP-TL (Projected GAN style).

The GAN recipe with the checks Projected GAN relies on: a discriminator built on a frozen feature
network (``arch: projected``), no gradient penalty (the fixed projections and spectral norm keep D
smooth; a penalty through four backbone levels would cost most of the speed), and inputs kept in
[-1, 1] (the GAN recipe's model range, which the EfficientNet-Lite weights expect). Hinge loss and
DiffAugment (color, translation, cutout) are set in configs/projected_busi_cpu.yaml. The
per-position logits the discriminator returns (N, K) are averaged by the losses.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from breastgan.config import ConfigError
from breastgan.training.recipes.base import RECIPES, RecipeArgs
from breastgan.training.recipes.gan import GANRecipe


class ProjectedArgs(RecipeArgs):
    require_augment: bool = Field(True, description="refuse to run without DiffAugment (Projected GAN's small-data recipe)")


@RECIPES.register("projected", args=ProjectedArgs, summary="Projected GAN: frozen EfficientNet-Lite0 features + fixed random mixing, hinge, DiffAugment, no penalty")
class ProjectedRecipe(GANRecipe):
    def __init__(self, cfg, args, env):
        super().__init__(cfg, args, env)
        if self.d_spec[0] != "projected":
            raise ConfigError(f"recipe projected: model.discriminator.arch must be 'projected', got {self.d_spec[0]!r}")
        if any(t.log_name == "gp" for t in self.terms):
            raise ConfigError("recipe projected: no gradient penalty (set loss.gp_lambda: 0 or use loss.name: hinge)")
        if args.require_augment and self.diffaug is None:
            raise ConfigError("recipe projected: train.augment.policy must be 'diffaugment' (or set recipe.require_augment: false)")

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "projected": {"backbone": self.d_spec[1]["backbone"]}}
