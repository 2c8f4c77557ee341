"""``phantom_full``: procedural two-view full-field mammograms (CC and MLO), no download.

For the progressive GAN's CPU tests and demos: whole-breast images at a 5:4 (H:W) size with the
chest wall on the left (laterality normalised, as ``prepare`` writes real films), zero background,
1/f^beta parenchyma inside the breast outline. The two views differ the way real ones do: an MLO
image has the pectoral muscle as a bright triangle in the upper-left corner and a breast outline
that reaches higher; a CC image has no muscle and a breast centred vertically. Labels: ``CC`` = 0,
``MLO`` = 1 (class names follow the DICOM ViewPosition values), alternating, so both views are
equally frequent.
"""

from __future__ import annotations

import json

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset
from breastgan.data.phantom import power_law_field

VIEWS = ("CC", "MLO")


class PhantomFullArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(256, ge=1, le=100_000, description="number of images (views alternate CC, MLO)")
    size: tuple[int, int] = Field((40, 32), description="(H, W); 5:4 for the progressive GAN's 5x4 base")
    seed: int = Field(0, ge=0)
    beta: float = Field(3.0, ge=1.0, le=5.0, description="power-law exponent of the parenchymal texture")
    views: list[str] = Field(list(VIEWS), min_length=1, description="views to make: CC, MLO or both")


def generate_full_phantom(n: int, size: tuple[int, int], seed: int, beta: float = 3.0, views: tuple[str, ...] = VIEWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, H, W) images in [0, 1] and (n,) view indices into :data:`VIEWS`."""
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"phantom_full: views: unknown view {v!r}; expected some of {list(VIEWS)}")
    h, w = size
    g = torch.Generator().manual_seed(seed)
    view_idx = torch.tensor([VIEWS.index(views[i % len(views)]) for i in range(n)], dtype=torch.long)
    mlo = (view_idx == 1).float().view(n, 1, 1)
    ys = (torch.arange(h).float() + 0.5).view(1, h, 1) / h
    xs = (torch.arange(w).float() + 0.5).view(1, 1, w) / w
    # breast: half-ellipse on the left edge; MLO sits higher and is taller
    cy = 0.5 - 0.08 * mlo + 0.04 * (torch.rand(n, 1, 1, generator=g) - 0.5)
    ry = 0.36 + 0.08 * mlo + 0.05 * torch.rand(n, 1, 1, generator=g)
    rx = 0.62 + 0.25 * torch.rand(n, 1, 1, generator=g)
    r = (xs / rx) ** 2 + ((ys - cy) / ry) ** 2
    breast = torch.sigmoid((1.0 - r) * 25.0)  # soft skin line
    texture = power_law_field(n, h, w, beta, g)
    base = 0.35 + 0.15 * torch.rand(n, 1, 1, generator=g)
    tissue = (base + 0.1 * texture) * (0.75 + 0.25 * (1 - r).clamp(0, 1))  # thinner (darker) tissue towards the skin
    # MLO: pectoral muscle, a bright triangle from the top-left corner
    depth = 0.35 + 0.15 * torch.rand(n, 1, 1, generator=g)
    pect = torch.sigmoid((1.0 - xs / depth - ys / (depth * 1.6)) * 30.0) * mlo
    img = breast * (tissue * (1 - pect) + 0.85 * pect)
    return img.clamp(0, 1).unsqueeze(1).contiguous(), view_idx


@DATASETS.register("phantom_full", args=PhantomFullArgs, summary="procedural two-view (CC/MLO) full-field mammograms, 5:4, chest wall left (no download)")
class PhantomFullDataset(TensorDataset):
    def __init__(self, **options: object):
        args = PhantomFullArgs.model_validate(options)
        images, labels = generate_full_phantom(args.n, tuple(args.size), args.seed, args.beta, tuple(args.views))
        info = DatasetInfo(name="phantom_full", image_size=tuple(args.size), class_names=VIEWS, bit_depth=16,
                           extra={"options": args.model_dump(mode="json")})
        super().__init__(images, labels, info, source="phantom_full:" + json.dumps(args.model_dump(mode="json"), sort_keys=True))
        self.args = args
