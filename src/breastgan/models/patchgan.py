"""PatchGAN discriminator (pix2pix, Isola et al. 2017): a map of real/fake scores, one per patch.

Layers as in the reference's ``NLayerDiscriminator``: C64 (4x4, stride 2, no norm), then
``n_layers - 1`` stride-2 blocks and one stride-1 block doubling the width up to 8x, then a 4x4
stride-1 conv to one channel; LeakyReLU 0.2; padding 1. With ``n_layers = 3`` each score sees a
70x70 patch and a 256x256 input gives a 30x30 map (158x126 at 1280x1024). The receptive field is
computed from the layer list (:func:`receptive_field`), not hard-coded, so a deeper or shallower
PatchGAN reports its own. Shared by CycleGAN, pix2pix and dm-GAN's site discriminators.

Forward returns the score map (N, 1, H', W'), not (N,): a patch loss averages over the map.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from breastgan.models.registry import DISCRIMINATORS
from breastgan.models.resnet_generator import TranslatorNorm, translator_norm

KERNEL, PADDING = 4, 1


def conv_plan(n_layers: int) -> list[tuple[int, int]]:
    """(kernel, stride) of every conv of an ``n_layers`` PatchGAN, input to output."""
    return [(KERNEL, 2)] + [(KERNEL, 2)] * (n_layers - 1) + [(KERNEL, 1), (KERNEL, 1)]


def receptive_field(n_layers: int) -> int:
    """Side of the input patch one output score depends on: r_in = (r_out - 1) * stride + kernel, walked back from 1."""
    r = 1
    for k, s in reversed(conv_plan(n_layers)):
        r = (r - 1) * s + k
    return r


def output_size(h: int, w: int, n_layers: int) -> tuple[int, int]:
    for k, s in conv_plan(n_layers):
        h, w = (h + 2 * PADDING - k) // s + 1, (w + 2 * PADDING - k) // s + 1
    return h, w


class PatchGANArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(1, ge=1, le=8, description="input channels (pix2pix conditional D: 2, the pair stacked)")
    ndf: int = Field(64, ge=1, le=1024, description="filters of the first layer")
    n_layers: int = Field(3, ge=1, le=8, description=f"stride-2 blocks; receptive field {receptive_field(3)} px at 3 "
                          f"({receptive_field(1)} at 1, {receptive_field(2)} at 2, {receptive_field(4)} at 4)")
    norm: TranslatorNorm = Field("instance", description="instance (CycleGAN), batch (pix2pix) or none")


@DISCRIMINATORS.register("patchgan", args=PatchGANArgs,
                         summary=f"PatchGAN (pix2pix/CycleGAN): 4x4 convs, LeakyReLU 0.2, score map; receptive field "
                                 f"{receptive_field(3)}x{receptive_field(3)} px at the default n_layers 3 (output 30x30 at 256x256)",
                         tags=("translation",))
class PatchGAN(nn.Module):
    def __init__(self, channels: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        self.channels, self.n_layers = channels, n_layers
        self.receptive_field = receptive_field(n_layers)
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, KERNEL, 2, PADDING), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, KERNEL, stride, PADDING, bias=bias), translator_norm(norm, ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, KERNEL, 1, PADDING))
        self.model = nn.Sequential(*layers)

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.model if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x)
