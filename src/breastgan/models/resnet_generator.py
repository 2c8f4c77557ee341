"""CycleGAN's ResNet generator (Johnson et al. 2016 as used by Zhu et al. 2017), image to image.

Layers as in the reference (junyanz/pytorch-CycleGAN-and-pix2pix ``ResnetGenerator``): reflection
pad 3, 7x7 conv (ngf), norm, ReLU; two 3x3 stride-2 convs; ``n_blocks`` residual blocks with
reflection padding; two 3x3 stride-2 transposed convs (output_padding 1); reflection pad 3, 7x7
conv, tanh. Instance norm has no affine parameters and no running statistics, so every image is
normalised by its own statistics at any size: that is what lets a model trained on 256 crops run on
a full 1280x1024 frame (and also why tiles of one image get different statistics - seams).

Unlike the reference, channels default to 1 (grey) and a side that is not a multiple of 4 is an
error naming the size instead of a silently cropped/padded output.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from breastgan.models.registry import GENERATORS

TranslatorNorm = Literal["instance", "batch", "none"]


def translator_norm(kind: str, channels: int) -> nn.Module:
    """The reference's norm layers: instance norm without affine/running stats; batch norm with both."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    return nn.Identity()


def check_multiple(x: torch.Tensor, multiple: int, arch: str) -> None:
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{arch}: image sides must be multiples of {multiple}, got {h}x{w} "
                         f"(crop or pad the input to e.g. {h - h % multiple}x{w - w % multiple})")


class ResnetGeneratorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(1, ge=1, le=4, description="image channels in and out (1: grey)")
    in_channels: int | None = Field(None, ge=1, le=4096, description="input channels when they differ from the output's "
                                    "(dm-GAN's G2 fed with G1's features); default: channels")
    ngf: int = Field(64, ge=1, le=1024, description="filters of the first conv layer")
    n_blocks: int = Field(9, ge=0, le=32, description="residual blocks (reference: 9 at 256 px, 6 at 128 px)")
    norm: TranslatorNorm = Field("instance", description="instance (reference), batch or none")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside residual blocks (reference: off for CycleGAN)")


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str, dropout: float):
        super().__init__()
        bias = norm == "instance" or norm == "none"  # the reference keeps biases under instance norm
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), translator_norm(norm, dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), translator_norm(norm, dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@GENERATORS.register("resnet_generator", args=ResnetGeneratorArgs,
                     summary="CycleGAN ResNet translator: reflection pad, instance norm (no affine/stats), 2 down, N residual blocks, 2 up; sides multiple of 4",
                     tags=("translation",))
class ResnetGenerator(nn.Module):
    size_multiple = 4  # two stride-2 convs, undone exactly by two transposed convs

    def __init__(self, channels: int = 1, ngf: int = 64, n_blocks: int = 9, norm: str = "instance", dropout: float = 0.0,
                 in_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels or channels
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(self.in_channels, ngf, 7, bias=bias), translator_norm(norm, ngf), nn.ReLU(True)]
        w = ngf
        for _ in range(2):
            layers += [nn.Conv2d(w, w * 2, 3, stride=2, padding=1, bias=bias), translator_norm(norm, w * 2), nn.ReLU(True)]
            w *= 2
        layers += [ResnetBlock(w, norm, dropout) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(w, w // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       translator_norm(norm, w // 2), nn.ReLU(True)]
            w //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_multiple(x, self.size_multiple, "resnet_generator")
        return self.model(x)
