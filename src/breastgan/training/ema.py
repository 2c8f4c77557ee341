"""Exponential moving average of a module's weights (smoother samples than the raw generator).

Parameters and buffers are paired by *name*, strictly: a module that grew (progressive GAN) or was
rebuilt must be re-paired with :meth:`EMA.rebuilt`, never silently zipped by position.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMAMismatchError(RuntimeError):
    """The averaged copy and the module no longer have the same parameter names and shapes."""


class EMA:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0):
        self.decay, self.start_step = decay, start_step
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay used after ``step`` updates.

        Warm-up ``min(decay, (1 + step) / (10 + step))`` (as TensorFlow's ExponentialMovingAverage
        with ``num_updates``): with a fixed 0.999 a short run would leave the average dominated by
        the random initialisation (0.999^400 = 0.67 after 400 steps), i.e. flat grey samples.
        """
        if step < self.start_step:
            return 0.0
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @staticmethod
    def _pairs(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if dst.keys() != src.keys():
            missing, extra = sorted(set(src) - set(dst)), sorted(set(dst) - set(src))
            raise EMAMismatchError(f"EMA {what} do not match the module's (only in module: {missing[:4]}, only in EMA: {extra[:4]}); "
                                   "rebuild the EMA copy after changing the module")
        pairs = []
        for name, d in dst.items():
            s = src[name]
            if d.shape != s.shape:
                raise EMAMismatchError(f"EMA {what[:-1]} {name!r} has shape {tuple(d.shape)}, the module's {tuple(s.shape)}")
            pairs.append((d, s))
        return pairs

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for ema_p, p in self._pairs(dict(self.model.named_parameters()), dict(model.named_parameters()), "parameters"):
            ema_p.lerp_(p.detach(), 1.0 - d)
        # buffers (batch-norm running statistics) are copied: averaging them has no meaning
        for ema_b, b in self._pairs(dict(self.model.named_buffers()), dict(model.named_buffers()), "buffers"):
            ema_b.copy_(b)

    @torch.no_grad()
    def rebuilt(self, model: nn.Module) -> "EMA":
        """A new average for a rebuilt ``model``: tensors whose name and shape survive keep their
        averaged values; new ones start from ``model`` (as ProGAN's Gs does when a layer is added)."""
        new = EMA(model, self.decay, self.start_step)
        old = self.model.state_dict()
        state = new.model.state_dict()
        for name, t in state.items():
            if name in old and old[name].shape == t.shape:
                t.copy_(old[name])
        return new
