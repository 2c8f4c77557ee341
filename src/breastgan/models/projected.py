"""A projected discriminator in the style of Projected GAN (Sauer et al. 2021; autonomousvision/projected-gan,
``pg_modules/projector.py`` and ``pg_modules/discriminator.py``): breastgan's faster variant for BUSI.

The image (in [-1, 1], as the EfficientNet-Lite weights expect; projected-gan #71) goes through a
frozen ImageNet EfficientNet-Lite0 at four levels (strides 4, 8, 16, 32). Each level is mixed by a
*fixed random* 1x1 convolution (cross-channel mixing, CCM) and the levels are fused top-down by
fixed random 3x3 convolutions (cross-scale mixing, CSM); neither mixing is trained (they are
registered as frozen, like the backbone). One small trained discriminator per level (stride-2
4x4 convolutions with spectral norm, batch norm and LeakyReLU down to 4x4, then a 4x4 convolution
to one logit) scores the mixed features.

Output: the per-position logits of every level, concatenated, shape (N, K). Losses average over all
of them (hinge: ``relu(1 - logits).mean()``), as projected-gan does; the GAN recipe's losses do that
elementwise already.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import spectral_norm

from breastgan.models.backbones import FrozenBackbone, build_backbone
from breastgan.models.registry import DISCRIMINATORS


class FixedRandomMixing(nn.Module):
    """CCM + CSM with random weights that are never trained (projected-gan's 'proj_type 2')."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: tuple[int, ...], seed: int, csm: bool):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ccm = nn.ModuleList(nn.Conv2d(ci, co, 1, bias=True) for ci, co in zip(in_channels, out_channels))
        self.csm = nn.ModuleList(nn.Conv2d(co, co, 3, 1, 1, bias=True) for co in out_channels) if csm else None
        self.up = nn.ModuleList(nn.Conv2d(out_channels[i + 1], out_channels[i], 1, bias=False) for i in range(len(out_channels) - 1)) if csm else None
        # PyTorch's default conv init (uniform, bound 1/sqrt(fan_in)), drawn from the mixing's own seed:
        # the mixing's randomness comes from its own seed, not the global torch state: the projection is
        # part of the architecture and must be the same for every run and rank that names this seed
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                bound = 1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** 0.5
                with torch.no_grad():
                    m.weight.copy_(torch.empty(m.weight.shape).uniform_(-bound, bound, generator=g))
                    if m.bias is not None:
                        m.bias.copy_(torch.empty(m.bias.shape).uniform_(-bound, bound, generator=g))
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FixedRandomMixing":
        return super().train(False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [c(f) for c, f in zip(self.ccm, feats)]
        if self.csm is None:
            return mixed
        out = [self.csm[-1](mixed[-1])]
        for i in range(len(mixed) - 2, -1, -1):  # top-down: deeper level upsampled and added
            up = F.interpolate(self.up[i](out[0]), size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, self.csm[i](mixed[i] + up))
        return out


class SingleScaleD(nn.Module):
    """Stride-2 blocks (spectral-norm conv 4x4, batch norm, LeakyReLU 0.2) to 4x4, then a 4x4 conv to one logit map."""

    def __init__(self, channels: int, size: int, width: int, max_width: int):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = channels, size
        w = width
        while s > 4:
            layers += [spectral_norm(nn.Conv2d(c, w, 4, 2, 1, bias=False)), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, True)]
            c, s, w = w, s // 2, min(max_width, w * 2)
        k = min(4, s)
        layers += [spectral_norm(nn.Conv2d(c, 1, k, 1, 0))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class ProjectedDArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(128, ge=32, le=1024)
    channels: int = Field(1, ge=1, le=3)
    num_classes: int = Field(0, ge=0, le=0)
    backbone: dict[str, Any] = Field(default_factory=lambda: {"name": "efficientnet_lite0", "levels": [1, 2, 3, 4]},
                                     description="frozen multi-level feature network (models/backbones.py)")
    mix_channels: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], description="CCM output channels per level")
    cross_scale: bool = Field(True, description="CSM: fuse levels top-down with fixed random convolutions")
    mix_seed: int = Field(0, description="seed of the fixed random projections")
    width: int = Field(64, ge=8, le=1024, description="first width of each per-level discriminator")
    max_width: int = Field(256, ge=8, le=2048)
    interpolate_to: int | None = Field(None, ge=32, le=1024, description="resize inputs to this side before the backbone (projected-gan: 224 for small images)")


@DISCRIMINATORS.register("projected", args=ProjectedDArgs,
                         summary="Projected GAN discriminator: frozen EfficientNet-Lite0 x4 levels, fixed random CCM/CSM, one small D per level",
                         tags=("projected", "pretrained"))
class ProjectedDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, num_classes: int, backbone: dict[str, Any], mix_channels: list[int], cross_scale: bool,
                 mix_seed: int, width: int, max_width: int, interpolate_to: int | None):
        super().__init__()
        self.backbone: FrozenBackbone = build_backbone(backbone, "model.discriminator.backbone")
        n = len(self.backbone.channels)
        if len(mix_channels) != n:
            raise ValueError(f"model.discriminator.mix_channels: {len(mix_channels)} values for {n} backbone levels")
        self.mix = FixedRandomMixing(tuple(self.backbone.channels), tuple(mix_channels), mix_seed, cross_scale)
        self.interpolate_to = interpolate_to
        side = interpolate_to or image_size
        self.heads = nn.ModuleList(SingleScaleD(c, max(1, side // r), width, max_width) for c, r in zip(mix_channels, self.backbone.reductions))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.interpolate_to and x.shape[-1] != self.interpolate_to:
            x = F.interpolate(x, size=(self.interpolate_to, self.interpolate_to), mode="bilinear", align_corners=False)
        feats = self.mix(self.backbone(x))
        return torch.cat([h(f) for h, f in zip(self.heads, feats)], dim=1)


__all__ = ["ProjectedDiscriminator"]
