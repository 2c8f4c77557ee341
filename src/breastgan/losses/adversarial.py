"""Adversarial objectives by name.

Each loss maps raw discriminator outputs to a discriminator loss and a generator loss; regularisers
(gradient penalty, drift, auxiliary classification, ...) are separate terms (``losses/terms.py``). Real-label
targets are passed in by the trainer (drawn from its seeded stream) so one-sided label smoothing,
fixed (0.9) or uniform per sample ([0.8, 1.1], the sharing study's recipe), is reproducible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from breastgan.registry import Registry

LOSSES: Registry[Any] = Registry("loss")


class SmoothingArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float | tuple[float, float] | None = Field(
        None, description="one-sided: real target value, or [low, high] drawn uniformly per sample (e.g. [0.8, 1.1])"
    )
    gp_lambda: float = Field(0.0, ge=0, description="gradient penalty weight (0 = off)")

    @field_validator("label_smoothing")
    @classmethod
    def _range(cls, v):
        if isinstance(v, tuple) and not v[0] <= v[1]:
            raise ValueError(f"label_smoothing range must be [low, high] with low <= high, got {list(v)}")
        if v is not None and not all(0 < x <= 2 for x in (v if isinstance(v, tuple) else (v,))):
            raise ValueError("label_smoothing values must lie in (0, 2]")
        return v


class NoSmoothingArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gp_lambda: float = Field(0.0, ge=0, description="gradient penalty weight (0 = off)")


class WGANGPArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gp_lambda: float = Field(10.0, ge=0, description="gradient penalty weight lambda")
    gp_target: float = Field(1.0, gt=0, description="target gradient norm (1 in WGAN-GP)")
    drift: float = Field(0.0, ge=0, description="epsilon * E[D(x)^2] drift term (ProGAN uses 1e-3)")


class AdversarialLoss(ABC):
    """Base class: subclasses define the two objectives. Scores are raw D outputs, shape (N,)."""

    #: D outputs are logits of a probability (D(x), D(G(z)) are reported as sigmoid means)
    probabilistic = True
    uses_gradient_penalty = False

    def __init__(self, gp_lambda: float = 0.0, label_smoothing: float | tuple[float, float] | None = None, **_: Any):
        self.gp_lambda = gp_lambda
        self.label_smoothing = label_smoothing

    def real_targets(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
        s = self.label_smoothing
        if s is None:
            return None
        if isinstance(s, (int, float)):
            return torch.full((n,), float(s), device=device)
        lo, hi = s
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    @abstractmethod
    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, real_targets: torch.Tensor | None = None) -> torch.Tensor: ...

    @abstractmethod
    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor: ...


def _ones_or(targets: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if targets is None else targets.to(like.dtype)


@LOSSES.register("minimax", args=SmoothingArgs, summary="textbook min_G max_D log D(x) + log(1 - D(G(z))) (saturating G loss)")
class MinimaxLoss(AdversarialLoss):
    def discriminator_loss(self, real, fake, real_targets=None):
        return F.binary_cross_entropy_with_logits(real, _ones_or(real_targets, real)) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

    def generator_loss(self, fake):
        # G minimises log(1 - D(G(z))) = -softplus(logit)
        return -F.softplus(fake).mean()


@LOSSES.register("nonsaturating", args=SmoothingArgs, summary="minimax D loss; G maximises log D(G(z)) (strong early gradients)")
class NonSaturatingLoss(MinimaxLoss):
    def generator_loss(self, fake):
        return F.softplus(-fake).mean()


@LOSSES.register("lsgan", args=SmoothingArgs, summary="least squares GAN (Mao et al. 2017): targets 1 real / 0 fake")
class LeastSquaresLoss(AdversarialLoss):
    probabilistic = False

    def discriminator_loss(self, real, fake, real_targets=None):
        return 0.5 * ((real - _ones_or(real_targets, real)) ** 2).mean() + 0.5 * (fake**2).mean()

    def generator_loss(self, fake):
        return 0.5 * ((fake - 1) ** 2).mean()


@LOSSES.register("hinge", args=NoSmoothingArgs, summary="hinge loss (Lim & Ye 2017; SAGAN/BigGAN)")
class HingeLoss(AdversarialLoss):
    probabilistic = False

    def discriminator_loss(self, real, fake, real_targets=None):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator_loss(self, fake):
        return -fake.mean()


@LOSSES.register("wgan-gp", args=WGANGPArgs, summary="Wasserstein loss with gradient penalty (critic: no batch norm; use n_critic 5)")
class WassersteinGPLoss(AdversarialLoss):
    probabilistic = False
    uses_gradient_penalty = True

    def __init__(self, gp_lambda: float = 10.0, gp_target: float = 1.0, drift: float = 0.0):
        super().__init__(gp_lambda=gp_lambda)
        self.gp_target, self.drift = gp_target, drift

    def discriminator_loss(self, real, fake, real_targets=None):
        # the drift and the gradient penalty are loss terms (losses/terms.py), logged on their own
        return fake.mean() - real.mean()

    def generator_loss(self, fake):
        return -fake.mean()
