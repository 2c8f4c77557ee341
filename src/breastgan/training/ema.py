"""Exponential moving average of generator weights (smoother samples than the raw generator)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0):
        self.decay, self.start_step = decay, start_step
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay used after ``step`` generator updates.

        Warm-up ``min(decay, (1 + step) / (10 + step))`` (as TensorFlow's ExponentialMovingAverage
        with ``num_updates``): with a fixed 0.999 a short run would leave the average dominated by
        the random initialisation (0.999^400 = 0.67 after 400 steps), i.e. flat grey samples.
        """
        if step < self.start_step:
            return 0.0
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - d)
        # buffers (batch-norm running statistics) are copied: averaging them has no meaning
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
