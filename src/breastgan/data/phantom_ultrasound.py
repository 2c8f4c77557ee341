"""Procedural breast-ultrasound-like images (no download): speckle texture, a dark lesion, posterior shadowing.

For tests and CPU demos of the ultrasound recipes (DGAN-WP-TL, projected), the way ``phantom`` is
for mammography patches. Each image is B-mode-like:

1. echogenicity map: bright skin line at the top, hypoechoic subcutaneous fat, brighter
   glandular layer with a wavy boundary, and smooth low-frequency variation;
2. a lesion (label 1 'malignant': irregular, lobulated margin, very dark, *posterior acoustic
   shadowing* below it; label 0 'benign': smooth oval, less dark, *posterior enhancement*);
3. fully developed speckle: complex Gaussian scatterers blurred by an anisotropic point-spread
   function (narrow axially, wide laterally), envelope = magnitude (Rayleigh statistics),
   multiplied by the echogenicity;
4. depth attenuation partly compensated by time-gain compensation, then log compression to [0, 1].

Everything is drawn from one ``torch.Generator`` seeded by ``seed``: same options, same images.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _blur(x: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) with replicated borders (the speckle PSF, smooth fields)."""
    for dim, sigma in ((2, sigma_y), (3, sigma_x)):
        half = max(1, math.ceil(3 * sigma))
        t = torch.arange(-half, half + 1, dtype=torch.float32)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, -1, 1) if dim == 2 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, half, half) if dim == 2 else (half, half, 0, 0)
        x = F.conv2d(F.pad(x, pad, mode="replicate"), k)
    return x


def generate_ultrasound(n: int, size: int, seed: int, malignant_fraction: float = 0.5, speckle: float = 1.0,
                        shadow: tuple[float, float] = (0.55, 0.85)) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` images (n, 1, size, size) in [0, 1], labels (0 benign, 1 malignant) and the lesion geometry
    (centre ``cy``, ``cx`` and radii ``ry``, ``rx`` as fractions of the side)."""
    g = torch.Generator().manual_seed(seed)
    H = W = size
    yy = torch.linspace(0, 1, H).view(1, H, 1).expand(n, H, W)
    xx = torch.linspace(0, 1, W).view(1, 1, W).expand(n, H, W)
    labels = (torch.rand(n, generator=g) < malignant_fraction).long()
    mal = labels.bool().view(n, 1, 1)

    # 1. layered echogenicity
    skin = _u(g, n, 0.03, 0.07).view(n, 1, 1)
    fat_end = _u(g, n, 0.18, 0.32).view(n, 1, 1)
    phase, freq = _u(g, n, 0, 2 * math.pi).view(n, 1, 1), _u(g, n, 1.0, 3.0).view(n, 1, 1)
    boundary = fat_end + 0.04 * torch.sin(2 * math.pi * freq * xx + phase)
    echo = torch.full((n, H, W), 0.9)
    echo = torch.where(yy < boundary, torch.full_like(echo, 0.45), echo)  # hypoechoic fat
    echo = torch.where(yy < skin, torch.full_like(echo, 1.6), echo)  # bright skin line
    # smooth variation drawn at 1/8 resolution and upsampled: the same field for a fraction of the cost
    lowfreq = F.interpolate(_blur(torch.randn(n, 1, max(8, H // 8), max(8, W // 8), generator=g), 1.25, 1.25), size=(H, W),
                            mode="bilinear", align_corners=False)[:, 0]
    echo = echo * torch.exp(0.3 * lowfreq / lowfreq.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1))  # positive: no black holes

    # 2. lesion: radius modulated by harmonics (irregular when malignant), darker when malignant
    cy, cx = _u(g, n, 0.42, 0.62).view(n, 1, 1), _u(g, n, 0.3, 0.7).view(n, 1, 1)
    ry, rx = _u(g, n, 0.08, 0.16).view(n, 1, 1), _u(g, n, 0.12, 0.24).view(n, 1, 1)
    angle = torch.atan2((yy - cy) / ry, (xx - cx) / rx)
    rho = torch.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    wobble = torch.zeros(n, H, W)
    for k in (3, 5, 7, 11):
        amp = torch.where(mal, _u(g, n, 0.04, 0.12).view(n, 1, 1), _u(g, n, 0.0, 0.02).view(n, 1, 1))
        wobble = wobble + amp * torch.sin(k * angle + _u(g, n, 0, 2 * math.pi).view(n, 1, 1))
    inside = torch.sigmoid((1 + wobble - rho) * torch.where(mal, 25.0, 12.0))
    darkness = torch.where(mal, _u(g, n, 0.05, 0.15).view(n, 1, 1), _u(g, n, 0.15, 0.35).view(n, 1, 1))
    echo = echo * (1 - inside * (1 - darkness))

    # posterior effect: a column below the lesion, soft lateral edges, fading with depth
    bottom = cy + ry
    lateral = torch.exp(-(((xx - cx) / (0.8 * rx)) ** 8))
    below = torch.sigmoid((yy - bottom) * size / 4) * torch.exp(-(yy - bottom).clamp_min(0) * 1.2)
    strength = torch.where(mal, -_u(g, n, *shadow).view(n, 1, 1), _u(g, n, 0.25, 0.5).view(n, 1, 1))
    echo = echo * (1 + strength * lateral * below).clamp_min(0.02)

    # 3. speckle: complex Gaussian scatterers through an anisotropic PSF, envelope detection
    re = _blur(torch.randn(n, 1, H, W, generator=g), max(0.6, size / 256), max(1.2, size / 96))[:, 0]
    im = _blur(torch.randn(n, 1, H, W, generator=g), max(0.6, size / 256), max(1.2, size / 96))[:, 0]
    envelope = torch.sqrt(re**2 + im**2)
    envelope = envelope / envelope.flatten(1).mean(1).view(n, 1, 1)
    signal = echo * (1 + speckle * (envelope - 1))

    # 4. attenuation with partial gain compensation, log compression
    alpha = _u(g, n, 0.8, 1.6).view(n, 1, 1)
    signal = signal.clamp_min(0) * torch.exp(-alpha * yy * 0.6)
    img = torch.log1p(30 * signal) / math.log1p(30 * 2.5)
    geometry = {"cy": cy.flatten(), "cx": cx.flatten(), "ry": ry.flatten(), "rx": rx.flatten()}
    return img.clamp(0, 1).unsqueeze(1).float(), labels, geometry


class UltrasoundPhantomArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(512, ge=1, le=200_000, description="number of images")
    size: int = Field(128, ge=32, le=1024, description="side in pixels")
    seed: int = Field(0, ge=0)
    malignant_fraction: float = Field(0.5, ge=0, le=1, description="share of label-1 images (irregular lesion, posterior shadowing)")
    speckle: float = Field(1.0, ge=0, le=2, description="speckle strength (0: the echogenicity map alone)")
    label: int | None = Field(None, ge=0, le=1, description="keep only this class (e.g. 1: malignant only, as DGAN-WP-TL trains)")


@DATASETS.register("phantom_ultrasound", args=UltrasoundPhantomArgs,
                   summary="Procedural breast ultrasound: speckle, dark lesion, posterior shadowing (malignant) or enhancement (benign)")
class UltrasoundPhantomDataset(TensorDataset):
    def __init__(self, **options: object):
        args = UltrasoundPhantomArgs.model_validate(options)
        frac = args.malignant_fraction if args.label is None else float(args.label)
        images, labels, geometry = generate_ultrasound(args.n, args.size, args.seed, frac, args.speckle)
        info = DatasetInfo(name="phantom_ultrasound", image_size=(args.size, args.size), class_names=("benign", "malignant"),
                           bit_depth=16, extra={"options": args.model_dump(mode="json")})
        super().__init__(images, labels, info, source="phantom_ultrasound:" + json.dumps(args.model_dump(mode="json"), sort_keys=True))
        self.args = args
        self.metadata = geometry  # per-image lesion centre and radii (fractions of the side)
