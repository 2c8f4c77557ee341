"""Real-image flips and differentiable augmentation (DiffAugment, Zhao et al. 2020) for small data.

Written by hand instead of kornia.augmentation because every random draw must come from the
trainer's own seeded ``torch.Generator`` at the global batch size (then sliced per process): that is
what makes resume bit-exact and draws identical whatever the number of processes; kornia draws its
parameters from the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flips(x: torch.Tensor, u: torch.Tensor, hflip: bool, vflip: bool) -> torch.Tensor:
    """Flip samples where ``u[:, 0] < 0.5`` horizontally and ``u[:, 1] < 0.5`` vertically."""
    if hflip:
        m = (u[:, 0] < 0.5).view(-1, 1, 1, 1)
        x = torch.where(m, x.flip(-1), x)
    if vflip:
        m = (u[:, 1] < 0.5).view(-1, 1, 1, 1)
        x = torch.where(m, x.flip(-2), x)
    return x


class DiffAugment:
    """Brightness/contrast ('color'), translation with zero padding, and cutout; all differentiable."""

    N_RANDOM = 6  # uniform numbers drawn per sample

    def __init__(self, ops: list[str], translation: float = 0.125, cutout: float = 0.5):
        self.ops, self.translation, self.cutout = list(ops), translation, cutout

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x`` in [-1, 1], shape (N, C, H, W); ``u`` uniform [0, 1) of shape (N, N_RANDOM)."""
        n, _, h, w = x.shape
        if "color" in self.ops:
            x = x + (u[:, 0] - 0.5).view(-1, 1, 1, 1)  # brightness in [-0.5, 0.5)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (u[:, 1] + 0.5).view(-1, 1, 1, 1) + mean  # contrast in [0.5, 1.5)
        if "translation" in self.ops and self.translation > 0:
            sx = int(w * self.translation + 0.5)
            sy = int(h * self.translation + 0.5)
            tx = (u[:, 2] * (2 * sx + 1)).long().clamp_max(2 * sx) - sx
            ty = (u[:, 3] * (2 * sy + 1)).long().clamp_max(2 * sy) - sy
            x = _translate(x, tx, ty)
        if "cutout" in self.ops:
            ch, cw = max(1, int(h * self.cutout + 0.5)), max(1, int(w * self.cutout + 0.5))
            cy = (u[:, 4] * (h + 1 - ch % 2)).long()
            cx = (u[:, 5] * (w + 1 - cw % 2)).long()
            yy = torch.arange(h, device=x.device).view(1, h, 1)
            xx = torch.arange(w, device=x.device).view(1, 1, w)
            inside = ((yy - cy.view(-1, 1, 1)).abs() <= ch // 2) & ((xx - cx.view(-1, 1, 1)).abs() <= cw // 2)
            x = x * (~inside).unsqueeze(1).to(x.dtype)
        return x


def _translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    pad = F.pad(x, (1, 1, 1, 1))  # zero border that out-of-range indices point at
    gy = (torch.arange(h, device=x.device).view(1, h, 1) - ty.view(-1, 1, 1) + 1).clamp(0, h + 1)
    gx = (torch.arange(w, device=x.device).view(1, 1, w) - tx.view(-1, 1, 1) + 1).clamp(0, w + 1)
    idx = (gy * (w + 2) + gx).view(n, 1, h * w).expand(-1, c, -1)
    return pad.flatten(2).gather(2, idx).view(n, c, h, w)
