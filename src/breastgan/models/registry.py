"""Registries and the contracts the training loop relies on.

Generator contract: ``G(z, labels) -> images`` in [-1, 1] of shape (N, channels, H, W), with
attributes ``latent_dim``, ``num_classes`` (0 = unconditional), ``image_size`` and ``channels``.
Discriminator contract: ``D(images, labels) -> scores`` of shape (N,), raw (logits or critic values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from breastgan.registry import Registry

GENERATORS: Registry[Any] = Registry("generator architecture")
DISCRIMINATORS: Registry[Any] = Registry("discriminator architecture")

# Arguments the trainer derives from the dataset; a config may set them only to the same value.
DATA_DERIVED = ("image_size", "channels", "num_classes")


class GeneratorBase(nn.Module):
    latent_dim: int
    num_classes: int
    image_size: tuple[int, int]
    channels: int

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


def resolve_args(registry: Registry, name: str, args: dict[str, Any], derived: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate user args, then fill or check the dataset-derived ones (image size, channels, classes)."""
    entry = registry.entry(name)
    parsed = entry.validate_args(args, where)
    out = parsed.model_dump()
    for key, value in derived.items():
        if key not in out:
            continue
        if key in parsed.model_fields_set and out[key] != value:
            raise ValueError(
                f"{where}.{key}: set to {out[key]!r} but the data implies {value!r}; remove the key or fix the data"
            )
        out[key] = value
    return entry.validate_args(out, where).model_dump()
