"""pix2pix's U-Net generator (Isola et al. 2017), image to image, built recursively as the reference.

``depth`` stride-2 4x4 down-convolutions (C64-C128-C256-C512-C512...) with skip connections to
the matching transposed convolutions; LeakyReLU 0.2 down, ReLU up, dropout 0.5 in the innermost
up-blocks (the reference's only noise source), tanh out. The reference's ``unet_256`` has depth 8
(256 px -> 1x1); the sides must be multiples of 2**depth, otherwise the skip concatenations do not
line up, so that is an error naming the size.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from breastgan.models.registry import GENERATORS
from breastgan.models.resnet_generator import TranslatorNorm, check_multiple, translator_norm


class UNetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(1, ge=1, le=4, description="image channels in and out (1: grey)")
    ngf: int = Field(64, ge=1, le=1024, description="filters of the outermost layer")
    depth: int = Field(8, ge=2, le=10, description="down-sampling steps; sides must be multiples of 2**depth (reference unet_256: 8)")
    norm: TranslatorNorm = Field("batch", description="batch (reference pix2pix), instance or none")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the innermost up-blocks (reference: 0.5)")


class UNetBlock(nn.Module):
    """One level: down-conv -> (inner levels) -> up-conv, its input concatenated to its output (skip)."""

    def __init__(self, outer: int, inner: int, in_ch: int | None, sub: nn.Module | None, *, outermost: bool = False,
                 innermost: bool = False, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.outermost = outermost
        in_ch = outer if in_ch is None else in_ch
        bias = norm != "batch"
        down = nn.Conv2d(in_ch, inner, 4, stride=2, padding=1, bias=bias)
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1)
            layers: list[nn.Module] = [down, sub, nn.ReLU(True), up, nn.Tanh()]  # type: ignore[list-item]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, translator_norm(norm, outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, translator_norm(norm, inner), sub, nn.ReLU(True), up, translator_norm(norm, outer)]  # type: ignore[list-item]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


@GENERATORS.register("unet", args=UNetArgs,
                     summary="pix2pix U-Net translator: 4x4 stride-2 convs with skips, batch norm, dropout 0.5; sides multiple of 2**depth",
                     tags=("translation",))
class UNetGenerator(nn.Module):
    def __init__(self, channels: int = 1, ngf: int = 64, depth: int = 8, norm: str = "batch", dropout: float = 0.5):
        super().__init__()
        self.channels, self.size_multiple = channels, 2**depth
        # the reference's widths: ngf*8 for the innermost depth-4 levels, then ngf*4, *2, *1 outwards
        widths = [ngf * min(8, 2**i) for i in range(depth)]  # width of level i's down-conv output
        block: nn.Module | None = None
        for i in reversed(range(1, depth)):
            inner, outer = widths[i], widths[i - 1]
            innermost = i == depth - 1
            # dropout on the innermost ngf*8 levels that have an inner level, as unet_256's three
            use_drop = dropout if (not innermost and inner == ngf * 8 and i >= depth - 4) else 0.0
            block = UNetBlock(outer, inner, None, block, innermost=innermost, norm=norm, dropout=use_drop)
        self.model = UNetBlock(channels, widths[0], channels, block, outermost=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_multiple(x, self.size_multiple, "unet")
        return self.model(x)
