"""dm-GAN's generator (Jiao, Xiao, Li 2023): G1, a multi-code inversion of a pretrained generator, refined by G2.

G = G2 o G1. G1 (:class:`~breastgan.models.multicode.MultiCodeGenerator`) is a pretrained, frozen
breastgan noise generator split at layer l: N codes give N feature maps that are fused with per-code
channel weights alpha (mGANprior). G2 is the ResNet encoder-decoder of pix2pix/CycleGAN (two stride-2
convolutions, 9 residual blocks, two transposed convolutions, output convolution) with dropout,
active in training mode only. What G2 reads is configurable because the paper is ambiguous:
``g2_input: image`` (G1's rendered image, the default: G2 is then an image-to-image refiner, as in
pix2pix) or ``features`` (G1's fused layer-l features, upsampled bilinearly to the image size).

Training feeds G with codes fitted to the training images (:meth:`DmGANGenerator.refine`). New
images need a rule for codes the paper does not give; this module's :meth:`forward` is that rule,
so a trained dm-GAN is an ordinary noise generator ``G(z)`` for generation, evaluation and export:

- ``alpha_gaussian``: fresh codes z_n ~ N(0, I) and alphas alpha ~ N(mean, diag(std^2)) per code and
  channel, the mean and std those of the alphas fitted to the training images (buffers
  ``alpha_mean``, ``alpha_std``: aggregate statistics of patient images, audited by the export gate
  like any trained weight). ``z`` concatenates the N code draws and the N x C_l alpha draws.
- ``interpolate``: a random pair of fitted code sets (i, j) and t ~ U(0, 1) from ``z``; codes and
  alphas linearly interpolated. It keeps every fitted code set (buffers ``code_bank``,
  ``alpha_bank``): codes fitted to individual patients, which :attr:`individual_fits` names so that
  ``breastgan export`` refuses the model.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from breastgan.models.multicode import MultiCodeGenerator
from breastgan.models.registry import GENERATORS, GeneratorBase
from breastgan.models.resnet_generator import ResnetGenerator, TranslatorNorm

SamplingRule = Literal["alpha_gaussian", "interpolate"]


class RendererSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str = Field(description="generator-registry key of the pretrained noise generator G1 splits (dcgan, progan, ...)")
    args: dict[str, Any] = Field(description="its arguments, as its run's model file records them")


class RefinerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ngf: int = Field(64, ge=1, le=1024)
    n_blocks: int = Field(9, ge=0, le=32, description="residual blocks (paper: 9)")
    norm: TranslatorNorm = "instance"
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout in the residual blocks, training mode only (paper: dropout in G2)")


class DmGANArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    renderer: RendererSpec
    layer: int = Field(8, ge=0, le=64, description="split layer of G1 (models/multicode.py lists a generator's split points)")
    n_codes: int = Field(20, ge=1, le=256, description="latent codes per image (paper: 20)")
    refiner: RefinerSpec = Field(default_factory=RefinerSpec)
    g2_input: Literal["image", "features"] = "image"
    sampling: SamplingRule = "alpha_gaussian"
    bank_size: int = Field(0, ge=0, le=1_000_000, description="fitted code sets kept for sampling: 'interpolate' needs >= 2")
    # noise-generator contract fields, derived from the renderer; a config may only repeat them
    image_size: Any = None
    channels: int | None = None
    num_classes: int = Field(0, ge=0, le=0, description="dm-GAN is unconditional")

    @model_validator(mode="after")
    def _rule(self) -> "DmGANArgs":
        if self.sampling == "interpolate" and self.bank_size < 2:
            raise ValueError("sampling 'interpolate' needs bank_size >= 2 (the fitted code sets it interpolates between)")
        if self.sampling == "alpha_gaussian" and self.bank_size:
            raise ValueError("bank_size is used by sampling 'interpolate' only; set it to 0")
        return self


def build_renderer(spec: RendererSpec | dict[str, Any]) -> nn.Module:
    spec = RendererSpec.model_validate(spec) if isinstance(spec, dict) else spec
    if spec.arch == "dmgan":
        raise ValueError("renderer.arch: dm-GAN cannot render with another dm-GAN; give the pretrained noise generator")
    entry = GENERATORS.entry(spec.arch)
    args = entry.validate_args(dict(spec.args), "renderer.args").model_dump()
    return entry.obj(**args)


@GENERATORS.register("dmgan", args=DmGANArgs,
                     summary="dm-GAN: multi-code inversion G1 of a pretrained generator (frozen) refined by a ResNet G2 with dropout; "
                             "G(z) samples new codes by a documented rule")
class DmGANGenerator(GeneratorBase):
    def __init__(self, renderer: dict[str, Any], layer: int = 8, n_codes: int = 20, refiner: dict[str, Any] | None = None,
                 g2_input: str = "image", sampling: str = "alpha_gaussian", bank_size: int = 0, image_size: Any = None,
                 channels: int | None = None, num_classes: int = 0):
        super().__init__()
        base = build_renderer(renderer)
        if getattr(base, "num_classes", 0):
            raise ValueError("renderer: dm-GAN's G1 needs an unconditional generator (num_classes 0)")
        self.g1 = MultiCodeGenerator(base, layer, n_codes)
        self.channels = int(self.g1.channels)
        self.image_size = tuple(int(v) for v in self.g1.image_size)
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if size is not None and tuple(size) != self.image_size:
            raise ValueError(f"image_size: {image_size!r} given but the renderer makes {self.image_size!r}")
        if channels is not None and channels != self.channels:
            raise ValueError(f"channels: {channels!r} given but the renderer makes {self.channels!r}")
        self.num_classes = 0
        self.n_codes, self.layer, self.code_dim = n_codes, layer, int(self.g1.latent_dim)
        c_l = int(self.g1.feature_shape[0])
        self.feature_channels = c_l
        self.g2_input, self.sampling = g2_input, sampling
        r = RefinerSpec.model_validate(refiner or {})
        self.g2 = ResnetGenerator(channels=self.channels, ngf=r.ngf, n_blocks=r.n_blocks, norm=r.norm, dropout=r.dropout,
                                  in_channels=c_l if g2_input == "features" else self.channels)
        # the sampling rule's statistics of the fitted alphas; unfitted: alpha 1, no spread, so the fused map is the
        # average of the N codes' maps (mGANprior's 1/N start of the *fit* would render a near-constant image)
        self.register_buffer("alpha_mean", torch.ones(n_codes, c_l))
        self.register_buffer("alpha_std", torch.zeros(n_codes, c_l))
        if sampling == "interpolate":
            self.register_buffer("code_bank", torch.zeros(bank_size, n_codes, self.code_dim))
            self.register_buffer("alpha_bank", torch.zeros(bank_size, n_codes, c_l))
        # z: the sampling rule's standard-normal draws (alpha_gaussian: codes then alphas; interpolate: pair and t)
        self.latent_dim = n_codes * (self.code_dim + c_l) if sampling == "alpha_gaussian" else 3

    def load_renderer(self, state: dict[str, torch.Tensor]) -> None:
        """The pretrained generator's weights (G1 renders with them; they stay frozen)."""
        self.g1.generator.load_state_dict(state)

    @property
    def individual_fits(self) -> list[str]:
        """Tensors of this module fitted to individual training images (export refuses a model holding any)."""
        return ["code_bank", "alpha_bank"] if self.sampling == "interpolate" else []

    # -- G = G2 o G1 ---------------------------------------------------------------------------------
    def refine(self, codes: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """G2(G1(codes, alphas)): (B, C, H, W) in [-1, 1] from (B, N, latent) codes and (B, N, C_l) alphas."""
        if self.g2_input == "features":
            feats = self.g1.fuse(codes, alphas)
            x = F.interpolate(feats, size=self.image_size, mode="bilinear", align_corners=False)
        else:
            x = self.g1(codes, alphas)
        return self.g2(x)

    def set_alpha_prior(self, alphas: torch.Tensor) -> None:
        """Fit the alpha_gaussian rule's statistics to fitted alphas (M, N, C_l)."""
        a = alphas.detach().float()
        self.alpha_mean.copy_(a.mean(0))
        self.alpha_std.copy_(a.std(0, unbiased=True) if a.shape[0] > 1 else torch.zeros_like(a[0]))

    def set_bank(self, codes: torch.Tensor, alphas: torch.Tensor) -> None:
        if self.sampling != "interpolate":
            raise ValueError("set_bank: only the 'interpolate' rule keeps fitted code sets")
        if codes.shape[0] != self.code_bank.shape[0]:
            raise ValueError(f"set_bank: {codes.shape[0]} code sets given, bank_size is {self.code_bank.shape[0]}")
        self.code_bank.copy_(codes.detach())
        self.alpha_bank.copy_(alphas.detach())

    def sample_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling rule: codes (B, N, latent) and alphas (B, N, C_l) from standard-normal draws z (B, latent_dim)."""
        b, n, d, c = z.shape[0], self.n_codes, self.code_dim, self.feature_channels
        if self.sampling == "alpha_gaussian":
            codes = z[:, : n * d].reshape(b, n, d)
            alphas = self.alpha_mean + self.alpha_std * z[:, n * d :].reshape(b, n, c)
            return codes, alphas
        # interpolate: the normal draws become a pair of distinct bank indices and t in (0, 1) via the normal CDF
        u = 0.5 * (1 + torch.erf(z / 2**0.5))
        m = self.code_bank.shape[0]
        i = (u[:, 0] * m).long().clamp(max=m - 1)
        j = (i + 1 + (u[:, 1] * (m - 1)).long().clamp(max=m - 2)) % m
        t = u[:, 2].view(b, 1, 1)
        codes = (1 - t) * self.code_bank[i] + t * self.code_bank[j]
        alphas = (1 - t) * self.alpha_bank[i] + t * self.alpha_bank[j]
        return codes, alphas

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("dm-GAN is unconditional: do not pass labels")
        codes, alphas = self.sample_codes(z)
        return self.refine(codes, alphas)
