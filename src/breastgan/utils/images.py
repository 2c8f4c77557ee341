"""Image grids for sample previews (8-bit PNG: they are for eyes, not for metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from breastgan.utils.atomic import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (C, H', W') grid with a black border between tiles."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.zeros(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i].float().clamp(0, 1)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> torch.Tensor:
    grid = make_grid(images.detach().cpu(), nrow)
    arr = (grid.numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(np.moveaxis(arr[:3], 0, -1))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return grid
