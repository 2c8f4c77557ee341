"""DGAN-WP-TL (Ryspayeva & Salykova; methods.md section 7): a DCGAN-style generator and a
discriminator with a frozen pretrained branch beside a custom convolutional path.

Generator: z in R^100 -> linear -> 8x8x512 -> transposed-conv blocks (4x4, stride 2, batch norm,
LeakyReLU), one per doubling up to the output size (six at 512: the seed's text says five blocks but
lists six doublings, reference-details.md) -> 3x3 convolution to one channel -> tanh.

Discriminator: grey input repeated to 3 channels -> (a) a frozen pretrained branch (models/backbones.py;
the seed's VGG19 to block2_pool, or EfficientNet-Lite0 offline, or a TorchScript domain network),
flattened, and (b) a custom path (stride-2 4x4 convolutions with widths 128 -> 256 -> 512,
LeakyReLU, two residual blocks of two 3x3 convolutions), flattened -> concatenated -> linear ->
one score. No batch norm in D: the gradient penalty is per sample. The penalty's input gradient
flows through the frozen branch (its parameters take no gradient; the input does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from breastgan.models.backbones import FrozenBackbone, build_backbone
from breastgan.models.layers import dcgan_init
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, GeneratorBase


def _check_size(v: int) -> int:
    if v < 16 or v > 1024 or (v & (v - 1)) != 0:
        raise ValueError(f"image_size must be a power of two between 16 and 1024 (the generator doubles from 8x8), got {v}")
    return v


class DGANGeneratorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(512, description="output side (power of two, 16-1024); doublings = log2(size / 8)")
    channels: int = Field(1, ge=1, le=3)
    latent_dim: int = Field(100, ge=1, le=4096)
    base_width: int = Field(512, ge=8, le=2048, description="channels of the 8x8 map; halved at each doubling")
    min_width: int = Field(16, ge=4, le=2048, description="floor of the halving widths")
    negative_slope: float = Field(0.2, ge=0, lt=1, description="LeakyReLU slope")
    num_classes: int = Field(0, ge=0, le=0, description="unconditional (the seed trains one class at a time)")

    _size = field_validator("image_size")(classmethod(lambda cls, v: _check_size(v)))


@GENERATORS.register("dgan_wp_tl", args=DGANGeneratorArgs, summary="DGAN-WP-TL generator: linear -> 8x8x512 -> 4x4/2 transposed convs (BN, LeakyReLU) -> tanh",
                     tags=("dgan_wp_tl", "ultrasound"))
class DGANGenerator(GeneratorBase):
    def __init__(self, image_size: int, channels: int, latent_dim: int, base_width: int, min_width: int, negative_slope: float, num_classes: int):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels = latent_dim, 0, channels
        self.image_size = (image_size, image_size)
        self.base_width = base_width
        self.fc = nn.Linear(latent_dim, 8 * 8 * base_width)
        layers: list[nn.Module] = [nn.BatchNorm2d(base_width), nn.LeakyReLU(negative_slope, True)]
        w = base_width
        for _ in range(int(math.log2(image_size // 8))):
            w_next = max(min_width, w // 2)
            layers += [nn.ConvTranspose2d(w, w_next, 4, 2, 1, bias=False), nn.BatchNorm2d(w_next), nn.LeakyReLU(negative_slope, True)]
            w = w_next
        layers += [nn.Conv2d(w, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], self.base_width, 8, 8))


class ResidualBlock(nn.Module):
    """x + conv3x3(LeakyReLU(conv3x3(x))), then LeakyReLU (the seed's two residual blocks)."""

    def __init__(self, width: int, slope: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(slope, True), nn.Conv2d(width, width, 3, 1, 1))
        self.act = nn.LeakyReLU(slope, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class DGANDiscriminatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = 512
    channels: int = Field(1, ge=1, le=3)
    num_classes: int = Field(0, ge=0, le=0, description="unconditional")
    backbone: dict[str, Any] = Field(default_factory=lambda: {"name": "efficientnet_lite0", "levels": [1]},
                                     description="frozen branch (models/backbones.py): {name: vgg19, weights: PATH, layer: block2_pool} is the seed's")
    backbone_weights: str | None = Field(None, description="shorthand for backbone.weights (--set model.discriminator.backbone_weights=PATH)")
    widths: list[int] = Field(default_factory=lambda: [128, 256, 512], description="custom path: one stride-2 4x4 conv per width")
    residual_blocks: int = Field(2, ge=0, le=8)
    negative_slope: float = Field(0.2, ge=0, lt=1)
    branch_pool: int = Field(1, ge=1, le=64, description="average-pool the branch's map by this factor before flattening (1 = the seed)")

    _size = field_validator("image_size")(classmethod(lambda cls, v: _check_size(v)))


@DISCRIMINATORS.register("dgan_wp_tl", args=DGANDiscriminatorArgs,
                         summary="DGAN-WP-TL discriminator: frozen pretrained branch || custom conv path with residual blocks -> linear",
                         tags=("dgan_wp_tl", "pretrained"))
class DGANDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, num_classes: int, backbone: dict[str, Any], backbone_weights: str | None,
                 widths: list[int], residual_blocks: int, negative_slope: float, branch_pool: int):
        super().__init__()
        spec = dict(backbone)
        if backbone_weights is not None:
            spec["weights"] = backbone_weights
        self.branch: FrozenBackbone = build_backbone(spec, "model.discriminator.backbone")
        if len(self.branch.channels) != 1:
            raise ValueError(f"model.discriminator.backbone: DGAN-WP-TL uses one feature level, got {len(self.branch.channels)} "
                             "(set levels: [1] for efficientnet_lite0)")
        self.branch_pool = nn.AvgPool2d(branch_pool) if branch_pool > 1 else nn.Identity()
        with torch.no_grad():  # the flattened size from one probe: exact for any backbone (maps or vectors)
            probe = self.branch(torch.zeros(1, channels, image_size, image_size))[0]
            if probe.shape[-1] < branch_pool:
                raise ValueError(f"model.discriminator.branch_pool: {branch_pool} exceeds the branch's {probe.shape[-1]}-pixel map")
            branch_dim = self.branch_pool(probe).numel()
        layers: list[nn.Module] = []
        c = 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(negative_slope, True)]
            c = w
        layers += [ResidualBlock(c, negative_slope) for _ in range(residual_blocks)]
        self.custom = nn.Sequential(*layers)
        if image_size % (2 ** len(widths)):
            raise ValueError(f"model.discriminator: image_size {image_size} is not divisible by 2^{len(widths)} (one halving per width)")
        custom_dim = c * (image_size // 2 ** len(widths)) ** 2
        self.head = nn.Linear(branch_dim + custom_dim, 1)
        # DCGAN init on the trained parts only: the frozen branch keeps its pretrained weights
        self.custom.apply(dcgan_init)
        self.head.apply(dcgan_init)

    def branch_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen branch's feature maps of images in [-1, 1] (the perceptual term's space)."""
        return self.branch(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x3 = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        a = self.branch_pool(self.branch(x)[0]).flatten(1)
        b = self.custom(x3).flatten(1)
        return self.head(torch.cat([a, b], dim=1)).squeeze(1)


__all__ = ["DGANGenerator", "DGANDiscriminator"]
