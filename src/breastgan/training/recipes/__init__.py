"""Recipes: what is trained and how one step goes (the loop in training/trainer.py does the rest).

Importing this package registers the built-in recipes in :data:`RECIPES`.
"""

from breastgan.training.recipes import gan  # noqa: F401  (registers 'gan')
from breastgan.training.recipes import dgan_wp_tl, projected  # noqa: F401  (register 'dgan_wp_tl', 'projected')
from breastgan.training.recipes import progan  # noqa: F401  (registers 'progan')
from breastgan.training.recipes import cyclegan  # noqa: F401,E402  (registers 'cyclegan')
from breastgan.training.recipes import pix2pix  # noqa: F401,E402  (registers 'pix2pix')
from breastgan.training.recipes.base import RECIPES, OptimizerSpec, Recipe, RecipeArgs, SchedulerSpec, StepOutput, StreamSpec

__all__ = ["RECIPES", "Recipe", "RecipeArgs", "OptimizerSpec", "SchedulerSpec", "StepOutput", "StreamSpec"]
