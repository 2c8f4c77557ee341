"""Recipes: what is trained and how one step goes (the loop in training/trainer.py does the rest).

Importing this package registers the built-in recipes in :data:`RECIPES`.
"""

from breastgan.training.recipes import cyclegan, dgan_wp_tl, dmgan, gan, pix2pix, progan, projected  # noqa: F401  (register the built-in recipes)
from breastgan.training.recipes.base import RECIPES, OptimizerSpec, Recipe, RecipeArgs, SchedulerSpec, StepOutput, StreamSpec

__all__ = ["RECIPES", "Recipe", "RecipeArgs", "OptimizerSpec", "SchedulerSpec", "StepOutput", "StreamSpec"]
