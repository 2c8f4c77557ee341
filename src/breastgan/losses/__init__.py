"""Adversarial losses (registry), extra loss terms (registry) and the gradient penalty."""

from breastgan.losses.adversarial import LOSSES, AdversarialLoss
from breastgan.losses.gradient_penalty import gradient_penalty
from breastgan.losses.terms import LOSS_TERMS, LossTerm, TermInputs, add_terms, draw_terms, terms_from_loss
from breastgan.losses import perceptual  # noqa: E402,F401  (registers the 'perceptual' term)

__all__ = ["LOSSES", "LOSS_TERMS", "AdversarialLoss", "LossTerm", "TermInputs", "add_terms", "draw_terms", "gradient_penalty", "terms_from_loss"]
