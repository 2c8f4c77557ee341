"""Fitting latent codes to images (GAN inversion): the codes an ``inversion`` model renders.

:func:`fit_latents` optimises z with Adam so that G(z) reconstructs each target, from several random
starts and, for a conditional G, under every class, keeping the best. The privacy audit's white-box
attack uses the same optimisation (members of the training set reconstruct better).
:func:`fit_codes` turns a loaded noise generator and images into a :class:`LoadedInversion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from breastgan.generation.kinds import LoadedGenerator, LoadedInversion


@dataclass
class FittedLatents:
    codes: torch.Tensor  # (N, latent_dim)
    labels: torch.Tensor | None  # (N,) for a conditional G
    losses: torch.Tensor  # (N,) reconstruction MSE in [0, 1] units


def fit_latents(G: nn.Module, targets: torch.Tensor, *, steps: int = 100, lr: float = 0.05, restarts: int = 2,
                latent_penalty: float = 1e-3, seed: int = 0, batch_size: int = 256) -> FittedLatents:
    """Best code of each target (N, C, H, W) in [0, 1] over restarts (and over classes for a conditional G)."""
    if steps < 1 or restarts < 1 or batch_size < 1:
        raise ValueError(f"fit_latents: steps, restarts and batch_size must be >= 1, got {steps}, {restarts}, {batch_size}")
    device = next(G.parameters()).device
    flags = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    classes = list(range(G.num_classes)) if getattr(G, "num_classes", 0) else [None]
    n = targets.shape[0]
    best = torch.full((n,), float("inf"))
    codes = torch.zeros(n, G.latent_dim)
    labels = torch.zeros(n, dtype=torch.long) if classes != [None] else None
    try:
        for start in range(0, n, batch_size):
            x = targets[start : start + batch_size].to(device).float()
            for label in classes:
                for _ in range(restarts):
                    z = torch.randn(x.shape[0], G.latent_dim, generator=g).to(device).requires_grad_(True)
                    y = torch.full((x.shape[0],), label, dtype=torch.long, device=device) if label is not None else None
                    opt = torch.optim.Adam([z], lr=lr)
                    with torch.enable_grad():
                        for _ in range(steps):
                            rec = (G(z, y).float().clamp(-1, 1) + 1) / 2
                            per = ((rec - x) ** 2).flatten(1).mean(1)
                            loss = per.sum() + latent_penalty * (z ** 2).mean(1).sum()
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                    with torch.no_grad():
                        final = (((G(z, y).float().clamp(-1, 1) + 1) / 2 - x) ** 2).flatten(1).mean(1).cpu()
                    sl = slice(start, start + x.shape[0])
                    better = final < best[sl]
                    codes[sl][better] = z.detach().cpu()[better]
                    if labels is not None:
                        labels[sl][better] = label
                    best[sl] = torch.minimum(best[sl], final)
    finally:
        for p, f in zip(G.parameters(), flags):
            p.requires_grad_(f)
    return FittedLatents(codes, labels, best)


def fit_codes(gen: LoadedGenerator, images01: torch.Tensor, *, steps: int = 200, lr: float = 0.05, restarts: int = 2,
              latent_penalty: float = 1e-3, seed: int = 0, batch_size: int = 256) -> LoadedInversion:
    """An inversion model whose codes reconstruct ``images01`` (N, C, H, W) in [0, 1] with ``gen``'s generator.

    The codes reproduce the images they were fitted to as closely as the generator allows: codes fitted
    to patient images are patient data (the privacy audit of an inversion package sees exactly them).
    """
    if not isinstance(gen, LoadedGenerator):
        raise TypeError(f"fit_codes needs a noise generator (LoadedGenerator), got {type(gen).__name__}")
    if len(gen.models) != 1:
        raise ValueError(f"fit_codes: a snapshot ensemble of {len(gen.models)} generators has no single code space; load one checkpoint")
    x = images01.detach().float().cpu() if isinstance(images01, torch.Tensor) else None
    want = (gen.channels, *gen.image_size)
    if x is None or x.ndim != 4 or tuple(x.shape[1:]) != want:
        got = tuple(images01.shape) if isinstance(images01, torch.Tensor) else type(images01).__name__
        raise ValueError(f"fit_codes: expected (N, {want[0]}, {want[1]}, {want[2]}) images in [0, 1] for this generator, got {got}")
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError("fit_codes: pixel values must lie in [0, 1]")
    G = gen.models[0]
    fitted = fit_latents(G, x.clamp(0, 1), steps=steps, lr=lr, restarts=restarts, latent_penalty=latent_penalty, seed=seed,
                         batch_size=batch_size)
    meta = {**gen.meta, "kind": "inversion", "codes_source": "fit_codes", "fit": {"steps": steps, "lr": lr, "restarts": restarts,
                                                                                   "latent_penalty": latent_penalty, "seed": seed},
            "fit_mse": [float(v) for v in fitted.losses]}
    return LoadedInversion(G, fitted.codes, fitted.labels, meta, list(gen.sources), gen.device)
