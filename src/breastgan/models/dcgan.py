"""DCGAN generator and discriminator (Radford et al. 2016) for square 32-256 px images, with the
mammography-patch adjustments of the model-sharing study (latent 100, discriminator kernel 6,
128x128 greyscale), a WGAN-GP critic (no batch norm), and class conditioning.

Conditioning: G concatenates a learned label embedding to z. D either projects (Miyato & Koyama
2018: score += <embed(y), sum-pooled features>) or concatenates one-hot label maps to its input.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from breastgan.models.layers import Norm, dcgan_init, norm_layer
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, GeneratorBase


def _check_size(v: int) -> int:
    if v < 32 or v > 256 or (v & (v - 1)) != 0:
        raise ValueError(f"image_size must be a power of two between 32 and 256, got {v}")
    return v


def _width(resolution: int, image_size: int, base: int, max_width: int) -> int:
    # DCGAN doubles channels each time resolution halves: base at image_size/2, capped at max_width
    return min(max_width, base * max(1, image_size // (2 * resolution)))


class DCGANGeneratorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(128, description="output side in pixels (power of two, 32-256)")
    channels: int = Field(1, ge=1, le=4)
    latent_dim: int = Field(100, ge=1, le=4096)
    base_width: int = Field(64, ge=4, le=1024, description="channels of the last hidden layer")
    max_width: int = Field(512, ge=4, le=4096)
    norm: Norm = "batch"
    num_classes: int = Field(0, ge=0, description="0 = unconditional")
    embed_dim: int = Field(50, ge=1, le=1024, description="label embedding size (conditional models)")

    _size = field_validator("image_size")(classmethod(lambda cls, v: _check_size(v)))


@GENERATORS.register("dcgan", args=DCGANGeneratorArgs, summary="DCGAN generator, transposed convolutions 4x4 -> 32..256 px", tags=("dcgan", "conditional"))
class DCGANGenerator(GeneratorBase):
    def __init__(self, image_size: int, channels: int, latent_dim: int, base_width: int, max_width: int, norm: Norm, num_classes: int, embed_dim: int):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels = latent_dim, num_classes, channels
        self.image_size = (image_size, image_size)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        in_dim = latent_dim + (embed_dim if num_classes > 0 else 0)
        res = 4
        w = _width(res, image_size, base_width, max_width)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, w, 4, 1, 0, bias=norm == "none"), norm_layer(norm, w), nn.ReLU(True)]
        while res * 2 < image_size:
            w_next = _width(res * 2, image_size, base_width, max_width)
            layers += [nn.ConvTranspose2d(w, w_next, 4, 2, 1, bias=norm == "none"), norm_layer(norm, w_next), nn.ReLU(True)]
            w, res = w_next, res * 2
        layers += [nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError(f"this generator is conditional on {self.num_classes} classes: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = 128
    channels: int = Field(1, ge=1, le=4)
    base_width: int = Field(64, ge=4, le=1024, description="channels of the first layer")
    max_width: int = Field(512, ge=4, le=4096)
    kernel_size: int = Field(4, ge=3, le=9, description="4 in DCGAN; the mammography-patch recipe uses 6")
    norm: Norm = "batch"
    num_classes: int = Field(0, ge=0)
    conditioning: Literal["projection", "concat"] = "projection"
    dropout: float = Field(0.0, ge=0, lt=1)
    aux_classifier: bool = Field(False, description="AC-GAN head: class logits from pooled features (loss term aux_classification)")

    _size = field_validator("image_size")(classmethod(lambda cls, v: _check_size(v)))


class DCGANDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, base_width: int, max_width: int, kernel_size: int, norm: Norm, num_classes: int,
                 conditioning: str, dropout: float, aux_classifier: bool = False):
        super().__init__()
        self.num_classes, self.conditioning = num_classes, conditioning
        pad = (kernel_size - 1) // 2  # halves any even side for kernel sizes 3..9 with stride 2
        in_ch = channels + (num_classes if num_classes > 0 and conditioning == "concat" else 0)
        res = image_size // 2
        w = _width(res, image_size, base_width, max_width)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, w, kernel_size, 2, pad), nn.LeakyReLU(0.2, True)]
        while res > 4:
            w_next = _width(res // 2, image_size, base_width, max_width)
            layers += [nn.Conv2d(w, w_next, kernel_size, 2, pad, bias=norm == "none"), norm_layer(norm, w_next), nn.LeakyReLU(0.2, True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            w, res = w_next, res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(w, 1, 4, 1, 0)
        self.embed = nn.Embedding(num_classes, w) if num_classes > 0 and conditioning == "projection" else None
        if aux_classifier and num_classes < 2:
            raise ValueError("aux_classifier needs a conditional run (data.conditional: true, at least 2 classes)")
        # created last, so the other layers' initial weights do not depend on whether it exists
        self.aux = nn.Linear(w, num_classes) if aux_classifier else None
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, return_aux: bool = False):
        """Scores (N,); with ``return_aux`` also the auxiliary classifier's logits (N, num_classes)."""
        if self.num_classes > 0 and labels is None:
            raise ValueError(f"this discriminator is conditional on {self.num_classes} classes: pass labels")
        if self.num_classes > 0 and self.conditioning == "concat":
            maps = nn.functional.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        h = self.features(x)
        out = self.head(h).flatten(1).sum(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(1)
        if return_aux:
            if self.aux is None:
                raise ValueError("this discriminator has no auxiliary classifier (model.discriminator.aux_classifier: true)")
            return out, self.aux(h.sum(dim=(2, 3)))
        return out


DISCRIMINATORS.register("dcgan", args=DCGANDiscriminatorArgs, summary="DCGAN discriminator, strided convolutions (kernel configurable)", tags=("dcgan", "conditional"))(DCGANDiscriminator)


class WGANCriticArgs(DCGANDiscriminatorArgs):
    norm: Literal["layer", "instance", "group", "none"] = "layer"  # type: ignore[assignment]


@DISCRIMINATORS.register("wgan_gp_critic", args=WGANCriticArgs, summary="WGAN-GP critic: the DCGAN discriminator without batch norm", tags=("wgan-gp", "conditional"))
class WGANGPCritic(DCGANDiscriminator):
    """DCGAN discriminator restricted to per-sample normalisation, as WGAN-GP requires."""
