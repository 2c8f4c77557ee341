"""WGAN-GP gradient penalty (Gulrajani et al. 2017)."""

from __future__ import annotations

from typing import Callable

import torch


def gradient_penalty(
    critic: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor,
    labels: torch.Tensor | None = None,
    target: float = 1.0,
) -> torch.Tensor:
    """E[(||grad_x D(x_hat)||_2 - target)^2] with x_hat = alpha * real + (1 - alpha) * fake.

    ``alpha`` (shape (N, 1, 1, 1), uniform in [0, 1]) is passed in rather than drawn here so the caller
    controls the random stream (exact resume, identical draws whatever the number of processes).
    The penalty is computed in float32 even under autocast: squared gradient norms overflow fp16.
    """
    with torch.autocast(device_type=real.device.type, enabled=False):
        x_hat = (alpha * real.float() + (1 - alpha) * fake.float()).requires_grad_(True)
        scores = critic(x_hat, labels)
        (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return ((norms - target) ** 2).mean()
