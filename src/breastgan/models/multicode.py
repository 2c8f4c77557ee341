"""G1 of dm-GAN: a pretrained noise generator split at layer ``l`` and driven by N latent codes (mGANprior).

Multi-code GAN prior (Gu, Shen & Zhou, CVPR 2020; genforce/mganprior ``derivable_models``): each code
z_n gives a feature map F_n = lower(z_n) at layer l; the maps are fused with per-code channel weights
alpha_n (size C_l) exactly as the reference does,

    fused = sum_n F_n * alpha_n[:, None, None] / N,        alpha initialised to 1/N, unconstrained,

and the generator's upper layers render the fused map. Note the extra 1/N: with one code and
alpha = 1, or N identical codes with alpha = 1, ``fused`` is F(z) and the image is exactly G(z).

Layer numbering (1-based, as mGANprior's PGGAN tables, whose index 0 is z itself): layer l is the
output of the generator's l-th layer, so the lower part holds layers 1..l and the upper part the rest.
:func:`split_points` names them. A splitter registry (:data:`LAYER_SPLITTERS`, keyed like the
generator registry) says where each architecture's layers are:

- ``dcgan``: one layer per transposed-conv block (conv, norm, ReLU): ``1: 4x4``, ``2: 8x8``, ...
  up to the last hidden block; the to-image conv + tanh is always in the upper part.
- ``progan`` (at the checkpoint's current stage, stable phase): ``1`` the dense layer to the base
  grid, ``2`` the base 3x3 conv, then for stage s ``2s+1`` the upsampling conv and ``2s+2`` the second
  conv (dm-GAN's l = 8 is stage 3's second conv, 8x base size, as PGGAN's layer 8 at 32x32).

The wrapped generator is a pretrained renderer: frozen (no parameter takes a gradient) and kept in
eval mode even when the wrapper is put in training mode (batch-norm statistics never move, so every
image's rendering is independent of the others in its batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from breastgan.registry import Registry

Layer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerSplit:
    """A generator's ordered layers: ``layers[0]`` takes z (B, latent_dim); ``head`` maps the last layer's output to the image."""

    names: list[str]
    layers: list[Layer]
    head: Layer


LAYER_SPLITTERS: Registry[Callable[[nn.Module], LayerSplit]] = Registry("layer splitter")


@LAYER_SPLITTERS.register("dcgan", summary="DCGAN generator: one layer per transposed-conv block (conv, norm, ReLU)")
def _split_dcgan(G: nn.Module) -> LayerSplit:
    mods = list(G.net)
    # the hidden blocks are (ConvTranspose2d, norm, ReLU) triples; the last two modules are the to-image conv and tanh
    n_blocks = (len(mods) - 2) // 3
    blocks = [nn.Sequential(*mods[3 * i : 3 * i + 3]) for i in range(n_blocks)]
    head = nn.Sequential(*mods[3 * n_blocks :])
    names, res = [], 4
    for i in range(n_blocks):
        names.append(f"block{i + 1}_{res}x{res}")
        res *= 2
    first = blocks[0]
    layers: list[Layer] = [lambda z: first(z[:, :, None, None]), *blocks[1:]]
    return LayerSplit(names, layers, head)


@LAYER_SPLITTERS.register("progan", summary="progressive GAN generator at its current stage: dense, base conv, then two convs per stage")
def _split_progan(G: nn.Module) -> LayerSplit:
    from breastgan.models.progan import lrelu, pixel_norm, stage_size, upsample

    if getattr(G, "fading", False):
        raise ValueError(f"progan generator at stage {G.stage} is mid fade-in (its image blends two stages); "
                         "invert a stable-phase checkpoint (one taken after the fade-in finished)")
    bh, bw = G.base_size

    def dense(z: torch.Tensor) -> torch.Tensor:
        return pixel_norm(lrelu(G.dense(G._input(z, None)).view(z.shape[0], -1, bh, bw)))

    def conv(layer: nn.Module, up: bool = False) -> Layer:
        return lambda h: pixel_norm(lrelu(layer(upsample(h) if up else h)))

    names = [f"dense_{bh}x{bw}", f"conv0_{bh}x{bw}"]
    layers: list[Layer] = [dense, conv(G.conv0)]
    for s, (conv_a, conv_b) in enumerate(G.blocks, start=1):
        h, w = stage_size(G.base_size, s)
        names += [f"stage{s}_conv_up_{h}x{w}", f"stage{s}_conv_{h}x{w}"]
        layers += [conv(conv_a, up=True), conv(conv_b)]
    return LayerSplit(names, layers, G.to_image[str(G.stage)])


def _splitter_name(G: nn.Module) -> str:
    """The splitter for G's class: its generator-registry name, looked up along the class hierarchy."""
    from breastgan.models.registry import GENERATORS

    for cls in type(G).__mro__:
        for entry in GENERATORS:
            if entry.obj is cls and entry.name in LAYER_SPLITTERS:
                return entry.name
    raise ValueError(f"multi-code inversion cannot split a {type(G).__name__} generator; "
                     f"supported generator types: {', '.join(LAYER_SPLITTERS.names())}")


def layer_split(G: nn.Module) -> LayerSplit:
    return LAYER_SPLITTERS.get(_splitter_name(G))(G)


def split_points(G: nn.Module) -> list[str]:
    """Names of G's layers in order: ``split_points(G)[l - 1]`` is layer ``l`` (1-based)."""
    return list(layer_split(G).names)


def check_layer(G: nn.Module, layer: int) -> None:
    names = split_points(G)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 1 <= layer <= len(names):
        listing = ", ".join(f"{i}: {n}" for i, n in enumerate(names, start=1))
        raise ValueError(f"layer {layer!r} is out of range for this {type(G).__name__}: valid layers are 1..{len(names)} ({listing})")


class MultiCodeGenerator(nn.Module):
    """G1: N codes -> N feature maps at layer ``layer`` -> channel-weighted fusion -> the upper layers' image in [-1, 1]."""

    def __init__(self, generator: nn.Module, layer: int, n_codes: int = 20):
        super().__init__()
        if getattr(generator, "num_classes", 0):
            raise ValueError(f"multi-code inversion of a conditional generator ({generator.num_classes} classes) is not supported: "
                             "the codes would need a label too; invert with an unconditional generator")
        if not isinstance(n_codes, int) or n_codes < 1:
            raise ValueError(f"n_codes must be an integer >= 1, got {n_codes!r}")
        check_layer(generator, layer)
        self.generator = generator
        generator.requires_grad_(False)
        generator.eval()
        split = layer_split(generator)
        self.layer, self.n_codes = layer, n_codes
        self.layer_name = split.names[layer - 1]
        self._lower, self._upper = split.layers[:layer], split.layers[layer:]
        # the head is one of the generator's own submodules: registering it again would store its tensors twice
        # (safetensors refuses shared tensors, so checkpoints of a module holding G1 would fail)
        object.__setattr__(self, "_head", split.head)
        self.latent_dim = int(generator.latent_dim)
        self.channels = int(generator.channels)
        self.image_size = tuple(int(s) for s in generator.image_size)
        device = next(generator.parameters()).device
        with torch.no_grad():
            self.feature_shape = tuple(self.lower(torch.zeros(1, self.latent_dim, device=device)).shape[1:])

    @property
    def feature_channels(self) -> int:
        return self.feature_shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def train(self, mode: bool = True) -> "MultiCodeGenerator":
        super().train(mode)
        self.generator.eval()  # a pretrained renderer: its batch-norm statistics stay fixed
        return self

    def lower(self, z: torch.Tensor) -> torch.Tensor:
        """Layers 1..l: (B, latent_dim) -> (B, C_l, h, w)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"lower: expected codes of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = z
        for f in self._lower:
            h = f(h)
        return h

    def upper(self, features: torch.Tensor) -> torch.Tensor:
        """Layers l+1.. and the to-image layer: (B, C_l, h, w) -> (B, C, H, W) in [-1, 1]."""
        if features.ndim != 4 or tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(f"upper: expected features of shape (B, {', '.join(map(str, self.feature_shape))}), got {tuple(features.shape)}")
        h = features
        for f in self._upper:
            h = f(h)
        return self._head(h)

    def fuse(self, codes: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """sum_n lower(z_n) * alpha_n[:, None, None] / N: (B, N, latent), (B, N, C_l) -> (B, C_l, h, w)."""
        b = self._check_inputs(codes, alphas)
        feats = self.lower(codes.reshape(b * self.n_codes, self.latent_dim)).view(b, self.n_codes, *self.feature_shape)
        return (feats * alphas[..., None, None].to(feats.dtype)).sum(1) / self.n_codes

    features = fuse

    def forward(self, codes: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        return self.upper(self.fuse(codes, alphas))

    def init_alphas(self, batch: int) -> torch.Tensor:
        return torch.full((batch, self.n_codes, self.feature_channels), 1.0 / self.n_codes, device=self.device)

    def init_codes(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn on the CPU so a seed gives the same codes on every device
        return torch.randn(batch, self.n_codes, self.latent_dim, generator=generator).to(self.device)

    def describe(self) -> dict:
        return {"generator": type(self.generator).__name__, "layer": self.layer, "layer_name": self.layer_name, "n_codes": self.n_codes,
                "feature_shape": list(self.feature_shape), "latent_dim": self.latent_dim, "image_size": list(self.image_size)}

    def _check_inputs(self, codes: torch.Tensor, alphas: torch.Tensor) -> int:
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (self.n_codes, self.latent_dim):
            raise ValueError(f"codes: expected shape (B, {self.n_codes}, {self.latent_dim}), got {tuple(codes.shape)}")
        b = codes.shape[0]
        if tuple(alphas.shape) != (b, self.n_codes, self.feature_channels):
            raise ValueError(f"alphas: expected shape ({b}, {self.n_codes}, {self.feature_channels}), got {tuple(alphas.shape)}")
        return b


__all__ = ["LAYER_SPLITTERS", "LayerSplit", "MultiCodeGenerator", "check_layer", "layer_split", "split_points"]
