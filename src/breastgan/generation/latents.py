"""Per-index deterministic latents (and synthetic test images): image i depends only on (seed, i).

Latents are drawn in fixed chunks of ``CHUNK`` indices, each chunk from its own generator seeded by
(seed, chunk). Any subset of images (one process's share of a distributed run, a resumed batch) is
therefore reproduced exactly without drawing the others.

:func:`synthetic_images` uses the same scheme (on another random stream) for the inputs of
translation models' reference samples: smooth random fields, made from the seed alone, so a package
never needs to carry input images, and never real ones.
"""

from __future__ import annotations

import math

import torch

CHUNK = 256
SYNTHETIC_INPUTS = "breastgan-synthetic-v1"  # the name manifests record for synthetic_images
_STREAM = 0xC2B2AE35


def _chunk_generator(seed: int, chunk: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + chunk * 0x85EBCA77 + stream * _STREAM) % (2**63 - 1))


def latents_for(indices_start: int, indices_stop: int, latent_dim: int, seed: int, num_classes: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (and uniformly drawn labels when ``num_classes`` > 0) for images [start, stop)."""
    zs, ys = [], []
    first, last = indices_start // CHUNK, (indices_stop - 1) // CHUNK
    for c in range(first, last + 1):
        g = _chunk_generator(seed, c)
        z = torch.randn(CHUNK, latent_dim, generator=g)
        y = torch.randint(0, num_classes, (CHUNK,), generator=g) if num_classes else None
        lo = max(indices_start, c * CHUNK) - c * CHUNK
        hi = min(indices_stop, (c + 1) * CHUNK) - c * CHUNK
        zs.append(z[lo:hi])
        if y is not None:
            ys.append(y[lo:hi])
    return torch.cat(zs), (torch.cat(ys) if ys else None)


def synthetic_images(start: int, stop: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Images [start, stop) of the synthetic set for ``seed``: (N, C, H, W) float32 in [0, 1].

    Each is a bilinear upsampling of a coarse uniform random grid (about 8 px per cell): smooth,
    structured enough to exercise a convolutional translator, and a pure function of (seed, index).
    """
    if not (0 <= start < stop):
        raise ValueError(f"synthetic images [{start}, {stop}): need 0 <= start < stop")
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"synthetic images: channels, height and width must be >= 1, got {channels}, {height}, {width}")
    ch, cw = max(2, math.ceil(height / 8)), max(2, math.ceil(width / 8))
    out = []
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        coarse = torch.rand(CHUNK, channels, ch, cw, generator=_chunk_generator(seed, c, stream=1))
        lo = max(start, c * CHUNK) - c * CHUNK
        hi = min(stop, (c + 1) * CHUNK) - c * CHUNK
        out.append(torch.nn.functional.interpolate(coarse[lo:hi], size=(height, width), mode="bilinear", align_corners=False))
    return torch.cat(out).clamp(0, 1).contiguous()
