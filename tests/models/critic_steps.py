"""A few WGAN-GP critic updates on random images: the frozen-branch tests train a discriminator with this."""

from __future__ import annotations

import torch

from breastgan.losses.gradient_penalty import gradient_penalty


def train_critic(D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` Adam updates of D's trainable parameters (lr 1e-2, gp weight 10) on one real and one fake batch; the last loss."""
    opt = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = D(fake).mean() - D(real).mean() + 10 * gradient_penalty(D, real, fake, torch.rand(real.shape[0], 1, 1, 1))
        loss.backward()
        opt.step()
    return loss
