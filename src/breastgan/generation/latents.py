"""Per-index deterministic latents: image i depends only on (seed, i).

Latents are drawn in fixed chunks of ``CHUNK`` indices, each chunk from its own generator seeded by
(seed, chunk). Any subset of images (one process's share of a distributed run, a resumed batch) is
therefore reproduced exactly without drawing the others.
"""

from __future__ import annotations

import torch

CHUNK = 256


def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + chunk * 0x85EBCA77) % (2**63 - 1))


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
