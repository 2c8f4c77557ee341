"""Adversarial losses (registry) and the gradient penalty."""

from breastgan.losses.adversarial import LOSSES, AdversarialLoss
from breastgan.losses.gradient_penalty import gradient_penalty

__all__ = ["LOSSES", "AdversarialLoss", "gradient_penalty"]
