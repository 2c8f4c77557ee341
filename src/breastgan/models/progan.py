"""Progressive GAN (Karras et al. 2018) for grey, non-square images: a 5x4 base doubling to 1280x1024.

Registry key ``progan`` (generator and discriminator). Follows the reference implementation
(tkarras/progressive_growing_of_gans, ``networks.py``) where ports usually deviate:

- equalised learning rate: weights drawn N(0, 1) and multiplied at run time by gain / sqrt(fan_in);
  gain sqrt(2) everywhere except 1 for to-image layers and D's last dense layer and sqrt(2)/4 for
  G's first dense layer; the bias is added after the scaling and is *not* scaled;
- pixel norm (eps 1e-8) on the latent (with conditioning: on the concatenation of z and the one-hot
  label) and after every G convolution;
- minibatch standard deviation in D's last block (groups of 4, see :func:`minibatch_stddev` for a
  batch that is smaller or not divisible);
- fade-in: G's output is lerp(nearest-upsampled previous to-image, new to-image, alpha); D mirrors
  it with 2x2 average pooling. A network built for a fade-in (``alpha`` not null) keeps alpha in a
  buffer named after its stage (``alpha_<stage>``: never carried over from another stage's network,
  and absent in the stable phase, where only the new to-image/from-image layer exists), so a checkpoint taken
  mid-fade regenerates exactly what it showed. The recipe fades the real images too.

Stages: stage ``s`` works at ``base * 2**s``; the final size (the data's) must be ``base * 2**S``.
``stage`` in the arguments is the current stage, so ``model.json`` rebuilds the network a
checkpoint holds. Nothing assumes a square or power-of-two image, or 3 channels.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from breastgan.models.registry import DISCRIMINATORS, GENERATORS, GeneratorBase

SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# layers


class EqualizedConv2d(nn.Module):
    """Conv with N(0, 1) weights scaled at run time by gain / sqrt(in * k * k); bias not scaled."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = gain / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    def __init__(self, in_f: int, out_f: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_f, in_f))
        self.bias = nn.Parameter(torch.zeros(out_f))
        self.scale = gain / math.sqrt(in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise every pixel's feature vector to unit mean square (over dim 1)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def stddev_group(n: int, group_size: int) -> int:
    """The group size minibatch stddev uses for a batch of ``n``.

    The batch when it is smaller than ``group_size`` (as the reference); otherwise the largest size
    <= ``group_size`` that divides ``n`` (a batch of 6 uses groups of 3). pytorch_GAN_zoo silently
    falls back to the whole batch, which changes the statistic with the batch; the reference
    cannot reshape at all.
    """
    g = min(group_size, n)
    while n % g:
        g -= 1
    return g


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, eps: float = 1e-8) -> torch.Tensor:
    """Append one feature map: the std over each group of samples, averaged over channels and pixels.

    Groups are *contiguous* samples (0-3, 4-7, ...), unlike the reference's strided groups, so a
    rank's local batch forms whole groups and 2 processes x b compute exactly what 1 x 2b does.
    Biased variance, + eps, sqrt: a group of identical samples gives sqrt(1e-8) = 1e-4.
    """
    n, c, h, w = x.shape
    g = stddev_group(n, group_size)
    # the statistic in at least fp32 (a bf16 variance of near-identical samples is all rounding)
    y = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).reshape(n // g, g, c, h, w)
    y = (y - y.mean(dim=1, keepdim=True)).pow(2).mean(dim=1)
    y = torch.sqrt(y + eps).mean(dim=(1, 2, 3))  # (n // g,)
    y = y.to(x.dtype).repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


# ----------------------------------------------------------------------------------------------
# arguments


class ProGANArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: tuple[int, int] | None = Field(None, description="(H, W) of a size base * 2**k; the recipe checks the data's size with it and records each stage's own size")
    channels: int = Field(1, ge=1)
    num_classes: int = Field(0, ge=0, description="0: unconditional; filled from the data when data.conditional")
    base_size: tuple[int, int] = Field((5, 4), description="(H, W) of the first stage; the final size is base * 2**stages")
    stage: int = Field(0, ge=0, description="current stage: the network works at base * 2**stage (set by the progan recipe)")
    fmap_base: int = Field(8192, ge=1, description="width of stage s: min(fmap_base / 2**(s+1), fmap_max), as the reference")
    fmap_max: int = Field(512, ge=1)
    widths: list[int] | None = Field(None, description="explicit per-stage widths, stage 0 first (the last repeats); overrides fmap_base/fmap_max")
    alpha: float | None = Field(None, ge=0, le=1, description="fade-in weight of a network built for a fade-in (set by the recipe); null: stable")

    @model_validator(mode="after")
    def _check(self) -> "ProGANArgs":
        if self.widths is not None and (not self.widths or min(self.widths) < 1):
            raise ValueError(f"widths: need positive channel counts, got {self.widths}")
        if self.image_size is None:  # a configuration before the data filled it in
            return self
        n = self.num_stages  # raises on a size that is not base * 2**k
        if self.stage >= n:
            raise ValueError(f"stage: {self.stage} is beyond the last stage {n - 1} of {self.base_size} -> {self.image_size}")
        return self

    @property
    def num_stages(self) -> int:
        if self.image_size is None:
            raise ValueError("image_size: not set (the recipe fills it from the data)")
        return num_stages(tuple(self.base_size), tuple(self.image_size))

    def width(self, s: int) -> int:
        if self.widths is not None:
            return int(self.widths[min(s, len(self.widths) - 1)])
        return max(1, min(self.fmap_base // 2 ** (s + 1), self.fmap_max))


def num_stages(base: tuple[int, int], final: tuple[int, int]) -> int:
    """Number of stages from ``base`` to ``final`` (both (H, W)); a clear error unless final = base * 2**k."""
    bh, bw = base
    h, w = final
    k = 0
    while bh * 2**k < h:
        k += 1
    if bh * 2**k != h or bw * 2**k != w:
        raise ValueError(f"image_size {tuple(final)} is not base_size {tuple(base)} x 2**k; prepare the images at e.g. "
                         f"{bh * 2 ** max(k, 0)}x{bw * 2 ** max(k, 0)} or change base_size")
    return k + 1


def stage_size(base: tuple[int, int], stage: int) -> tuple[int, int]:
    return base[0] * 2**stage, base[1] * 2**stage


class _Fading:
    """The fade-in weight: a buffer (saved with the weights, copied into EMA copies), named per stage."""

    stage: int
    fading: bool

    def _init_alpha(self, alpha: float | None) -> None:
        self.fading = alpha is not None and self.stage > 0
        if self.fading:
            self.register_buffer(f"alpha_{self.stage}", torch.tensor(float(alpha)))  # type: ignore[attr-defined]

    @property
    def alpha(self) -> torch.Tensor:
        if not self.fading:
            raise AttributeError(f"{type(self).__name__} at stage {self.stage} was built for the stable phase (no fade-in weight)")
        return getattr(self, f"alpha_{self.stage}")

    def _fade_stages(self) -> range:
        return range(self.stage - 1, self.stage + 1) if self.fading else range(self.stage, self.stage + 1)


# ----------------------------------------------------------------------------------------------
# generator


class ProGANGenerator(_Fading, GeneratorBase):
    """G(z, labels) -> (N, C, H, W) images at the current stage's size (linear output, model range [-1, 1])."""

    def __init__(self, image_size=(1280, 1024), channels: int = 1, num_classes: int = 0, base_size=(5, 4), stage: int = 0,
                 fmap_base: int = 8192, fmap_max: int = 512, widths: list[int] | None = None, latent_dim: int = 512,
                 alpha: float | None = None):
        super().__init__()
        a = ProGANArgs(image_size=tuple(image_size), channels=channels, num_classes=num_classes, base_size=tuple(base_size),
                       stage=stage, fmap_base=fmap_base, fmap_max=fmap_max, widths=widths, alpha=alpha)
        self.args = a
        self.latent_dim, self.num_classes, self.channels, self.stage = latent_dim, num_classes, channels, stage
        self.base_size = tuple(a.base_size)
        self.image_size = stage_size(self.base_size, stage)
        c0 = a.width(0)
        bh, bw = self.base_size
        # first block: dense to the base grid (gain sqrt(2)/4 as the reference), then a 3x3 conv
        self.dense = EqualizedLinear(latent_dim + num_classes, c0 * bh * bw, gain=SQRT2 / 4)
        self.conv0 = EqualizedConv2d(c0, c0, 3)
        self.blocks = nn.ModuleList()
        for s in range(1, stage + 1):
            self.blocks.append(nn.ModuleList([EqualizedConv2d(a.width(s - 1), a.width(s), 3), EqualizedConv2d(a.width(s), a.width(s), 3)]))
        self._init_alpha(alpha)
        # only the to-image layers in use (two while fading): an unused layer would stall DDP's gradient reduction
        self.to_image = nn.ModuleDict({str(s): EqualizedConv2d(a.width(s), channels, 1, gain=1.0) for s in self._fade_stages()})

    def _input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError(f"this generator is conditional ({self.num_classes} classes): pass labels")
            z = torch.cat([z, F.one_hot(labels.long(), self.num_classes).to(z.dtype)], dim=1)
        return pixel_norm(z)

    def features(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Feature maps after each stage's block (the last two are what fade-in blends)."""
        bh, bw = self.base_size
        h = self.dense(self._input(z, labels)).view(z.shape[0], -1, bh, bw)
        h = pixel_norm(lrelu(h))
        h = pixel_norm(lrelu(self.conv0(h)))
        feats = [h]
        for conv_a, conv_b in self.blocks:
            h = upsample(h)
            h = pixel_norm(lrelu(conv_a(h)))
            h = pixel_norm(lrelu(conv_b(h)))
            feats.append(h)
        return feats

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features(z, labels)
        out = self.to_image[str(self.stage)](feats[-1])
        if self.fading:
            # always blended while fading (no data-dependent branch: no host sync, no graph break, every
            # parameter gets a gradient under DDP)
            prev = upsample(self.to_image[str(self.stage - 1)](feats[-2]))
            out = torch.lerp(prev, out, self.alpha.to(out.dtype))
        return out


# ----------------------------------------------------------------------------------------------
# discriminator


class ProGANDiscArgs(ProGANArgs):
    mbstd_group: int = Field(4, ge=1, description="minibatch-stddev group size")
    aux_classifier: bool = Field(False, description="auxiliary-classifier head (num_classes logits) for view or any label")


class ProGANDiscriminator(_Fading, nn.Module):
    """D(x, labels) -> critic scores (N,); ``return_aux=True`` also gives the auxiliary-classifier logits.

    Labels are not an input: with ``aux_classifier`` D *predicts* them (AC-GAN, as ProGAN's label outputs).
    """

    def __init__(self, image_size=(1280, 1024), channels: int = 1, num_classes: int = 0, base_size=(5, 4), stage: int = 0,
                 fmap_base: int = 8192, fmap_max: int = 512, widths: list[int] | None = None, mbstd_group: int = 4,
                 aux_classifier: bool = False, alpha: float | None = None):
        super().__init__()
        a = ProGANDiscArgs(image_size=tuple(image_size), channels=channels, num_classes=num_classes, base_size=tuple(base_size),
                           stage=stage, fmap_base=fmap_base, fmap_max=fmap_max, widths=widths, mbstd_group=mbstd_group,
                           aux_classifier=aux_classifier, alpha=alpha)
        if aux_classifier and num_classes < 2:
            raise ValueError("aux_classifier: needs a labelled data set (data.conditional: true with at least 2 classes)")
        self.stage, self.mbstd_group, self.channels = stage, mbstd_group, channels
        self.num_classes = num_classes
        self.base_size = tuple(a.base_size)
        self.image_size = stage_size(self.base_size, stage)
        self._init_alpha(alpha)
        self.from_image = nn.ModuleDict({str(s): EqualizedConv2d(channels, a.width(s), 1) for s in self._fade_stages()})
        # blocks[s - 1] takes stage s's resolution to stage s - 1's
        self.blocks = nn.ModuleList()
        for s in range(1, stage + 1):
            self.blocks.append(nn.ModuleList([EqualizedConv2d(a.width(s), a.width(s), 3), EqualizedConv2d(a.width(s), a.width(s - 1), 3)]))
        c0 = a.width(0)
        bh, bw = self.base_size
        self.conv_last = EqualizedConv2d(c0 + 1, c0, 3)
        self.dense0 = EqualizedLinear(c0 * bh * bw, c0)
        self.n_aux = num_classes if aux_classifier else 0
        self.dense1 = EqualizedLinear(c0, 1 + self.n_aux, gain=1.0)

    def _block(self, s: int, h: torch.Tensor) -> torch.Tensor:
        conv_a, conv_b = self.blocks[s - 1]
        return downsample(lrelu(conv_b(lrelu(conv_a(h)))))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, return_aux: bool = False):
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"discriminator at stage {self.stage} takes {self.image_size} images, got {tuple(x.shape[-2:])}")
        s = self.stage
        h = lrelu(self.from_image[str(s)](x))
        if s > 0:
            h = self._block(s, h)
        if self.fading:
            prev = lrelu(self.from_image[str(s - 1)](downsample(x)))
            h = torch.lerp(prev, h, self.alpha.to(h.dtype))
        for k in range(s - 1, 0, -1):
            h = self._block(k, h)
        h = minibatch_stddev(h, self.mbstd_group)
        h = lrelu(self.conv_last(h))
        h = lrelu(self.dense0(h.flatten(1)))
        out = self.dense1(h)
        scores = out[:, 0]
        if return_aux:
            return scores, (out[:, 1:] if self.n_aux else None)
        return scores


class ProGANGenArgs(ProGANArgs):
    latent_dim: int = Field(512, ge=1)


GENERATORS.register("progan", args=ProGANGenArgs, summary="progressive GAN generator: 5x4 base doubling to the data size (grey, non-square), pixel norm, equalised lr")(ProGANGenerator)
DISCRIMINATORS.register("progan", args=ProGANDiscArgs, summary="progressive GAN critic: minibatch stddev, equalised lr, fade-in, optional aux-classifier head")(ProGANDiscriminator)

__all__ = ["ProGANGenerator", "ProGANDiscriminator", "EqualizedConv2d", "EqualizedLinear", "pixel_norm", "minibatch_stddev",
           "stddev_group", "num_stages", "stage_size", "upsample", "downsample"]

