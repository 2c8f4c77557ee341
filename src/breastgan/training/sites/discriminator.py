"""One site's step of the AsynDGAN protocol (dm-GAN's distributed discriminators).

A site holds D_j and its real images. Per coordinator step it receives a generated batch, updates
D_j on (its real batch, the generated batch), then, with the *updated* D_j, computes the generator
loss and returns only the scalars and d g_loss_j / d fake_j. The coordinator weights the gradients
by pi_j and back-propagates them into the generator (:func:`breastgan.training.sites.combine.weighted_backward`).
Real pixels never leave the site: the answer holds two floats, a tensor shaped like the fakes it
answers and the shard size.

Gradient penalties need the real images in the generator-independent D step only, but WGAN-GP's
critic is unbounded without it, and this module does not implement penalty terms: losses with a
penalty (``wgan-gp``, or any loss with ``gp_lambda > 0``) are refused with an error. lsgan, minimax,
nonsaturating and hinge are supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from breastgan.losses.adversarial import AdversarialLoss


@dataclass
class SiteAnswer:
    """What a site sends back for one coordinator step."""

    site: int
    step: int  # the coordinator step whose fakes this answers
    d_loss: float
    g_loss: float
    grad: torch.Tensor  # d g_loss / d fake, shaped like the fakes
    n_real: int  # the site's shard size (the coordinator's pi_j)


def check_site_loss(loss: AdversarialLoss) -> None:
    """Refuse losses whose discriminator step needs a penalty term the site update does not compute."""
    if getattr(loss, "uses_gradient_penalty", False) or getattr(loss, "gp_lambda", 0.0) > 0:
        raise ValueError(f"dm-GAN site discriminators: loss {type(loss).__name__} needs a gradient penalty, which the site "
                         "update does not compute; use lsgan, minimax, nonsaturating or hinge (gp_lambda 0)")


def real_targets_like(loss: AdversarialLoss, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """Label-smoothed real targets, one per sample, broadcast over the PatchGAN score map."""
    t = loss.real_targets(scores.shape[0], generator, scores.device)
    return None if t is None else t.view(-1, *([1] * (scores.ndim - 1))).expand_as(scores)


class frozen:
    """Context: a module's parameters do not require grad; the previous flags come back on exit."""

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)


def site_update(D: nn.Module, opt: torch.optim.Optimizer, loss: AdversarialLoss, real: torch.Tensor, fake: torch.Tensor,
                *, generator: torch.Generator | None = None) -> tuple[float, float, torch.Tensor]:
    """One D_j step on (real, fake), then the generator loss and its gradient w.r.t. ``fake`` under the updated D_j.

    ``real`` and ``fake`` are (b, C, H, W) in model range [-1, 1]; ``fake`` is used detached.
    ``generator`` draws label-smoothed real targets when the loss smooths. Returns (d_loss, g_loss, grad).
    """
    check_site_loss(loss)
    fake = fake.detach()
    opt.zero_grad(set_to_none=True)
    d_real = D(real).float()
    d_loss = loss.discriminator_loss(d_real, D(fake).float(), real_targets_like(loss, d_real, generator))
    d_loss.backward()
    opt.step()
    # the generator's gradient comes from the updated D (AsynDGAN's order); D's parameters get no grad
    with frozen(D):
        leaf = fake.clone().requires_grad_(True)
        g_loss = loss.generator_loss(D(leaf).float())
        (grad,) = torch.autograd.grad(g_loss, leaf)
    return float(d_loss.detach()), float(g_loss.detach()), grad
