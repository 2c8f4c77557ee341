"""Exponential moving average of generator weights (smoother samples than the raw generator)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0):
        self.decay, self.start_step = decay, start_step
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = 0.0 if step < self.start_step else self.decay
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - d)
        # buffers (batch-norm running statistics) are copied: averaging them has no meaning
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
