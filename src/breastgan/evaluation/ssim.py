"""PSNR, SSIM and MS-SSIM on grey [0, 1] images, with stated pairing protocols.

SSIM follows Wang et al. 2004 exactly as pytorch-msssim computes it (Gaussian window 11, sigma 1.5,
K = (0.01, 0.03), valid convolution, mean of the SSIM map), and MS-SSIM Wang et al. 2003 (5 scales,
weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333, 2x2 average pooling, negative contrast terms clipped).

128x128 patches: with an 11x11 window five scales need a side above 160 px (both pytorch-msssim and
torchmetrics refuse smaller images). :func:`ms_ssim_config` keeps five scales with a 7x7 window
(sigma 1.5) down to 97 px, and below that drops the coarsest scales and renormalises the remaining
weights. The configuration used is part of every result.

Pairing protocols (``methods.md`` §8): ``paired`` compares real[i] with fake[i] (reconstructions),
``random`` draws random real-fake pairs, ``nearest`` pairs each fake with its nearest real image in
pixel MSE (PSNR's usual protocol for unpaired generators). Fake-fake diversity is the mean over
random pairs of distinct synthetic images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import apply_interval, mean_interval, pair_mean_interval
from breastgan.evaluation.context import PIXEL_POLICY, EvaluationContext, MetricResult, register_metric

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _band_matrix(length: int, win: torch.Tensor) -> torch.Tensor:
    """(length, length - k + 1) matrix whose columns hold the window at each valid offset."""
    k = win.numel()
    m = torch.zeros(length, length - k + 1, dtype=win.dtype)
    for i in range(length - k + 1):
        m[i : i + k, i] = win
    return m


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    # separable valid Gaussian filtering as two banded matmuls: ~10x faster than 1-channel conv2d on CPU
    h, w = x.shape[-2:]
    mw = _band_matrix(w, win.to(x.dtype))
    mh = mw if h == w else _band_matrix(h, win.to(x.dtype))
    return mh.T @ (x @ mw)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float, k1: float = 0.01, k2: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y, exx, eyy, exy = _filter(torch.stack([x, y, x * x, y * y, x * y]), win).unbind(0)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (mean over channels) of two (N, C, H, W) batches."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM window {window_size} is larger than the image ({tuple(x.shape[-2:])})")
    n, c = x.shape[:2]
    s, _ = _ssim_and_cs(x.float().reshape(n * c, 1, *x.shape[-2:]), y.float().reshape(n * c, 1, *y.shape[-2:]), gaussian_window(window_size, sigma), data_range)
    return s.view(n, c).mean(1)


@dataclass(frozen=True)
class MSSSIMConfig:
    window_size: int
    sigma: float
    weights: tuple[float, ...]
    note: str

    def describe(self) -> dict[str, Any]:
        return {"window_size": self.window_size, "sigma": self.sigma, "scales": len(self.weights), "weights": list(self.weights), "note": self.note}


def ms_ssim_config(size: int, window_size: int = 11, sigma: float = 1.5) -> MSSSIMConfig:
    """The standard MS-SSIM if ``size`` allows it, else a 7x7 window, else fewer scales (weights renormalised)."""
    if size > (window_size - 1) * 2**4:
        return MSSSIMConfig(window_size, sigma, MS_SSIM_WEIGHTS, "standard (Wang et al. 2003)")
    if size > (7 - 1) * 2**4:
        return MSSSIMConfig(7, sigma, MS_SSIM_WEIGHTS, f"{size} px is too small for a {window_size}x{window_size} window at 5 scales; 7x7 window")
    for scales in range(4, 0, -1):
        if size > (7 - 1) * 2 ** (scales - 1):
            w = MS_SSIM_WEIGHTS[:scales]
            total = sum(w)
            return MSSSIMConfig(7, sigma, tuple(v / total for v in w), f"{size} px: 7x7 window, {scales} scales, weights renormalised")
    raise ValueError(f"images of {size} px are too small for MS-SSIM (need more than 6 px)")


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, config: MSSSIMConfig | None = None) -> torch.Tensor:
    """Per-image MS-SSIM of two (N, C, H, W) batches; ``config`` defaults to :func:`ms_ssim_config` for the size."""
    _check_pair(x, y)
    cfg = config or ms_ssim_config(min(x.shape[-2:]))
    levels = len(cfg.weights)
    if min(x.shape[-2:]) <= (cfg.window_size - 1) * 2 ** (levels - 1):
        raise ValueError(f"MS-SSIM with a {cfg.window_size}x{cfg.window_size} window and {levels} scales needs images above "
                         f"{(cfg.window_size - 1) * 2 ** (levels - 1)} px, got {tuple(x.shape[-2:])}")
    n, c = x.shape[:2]
    a = x.float().reshape(n * c, 1, *x.shape[-2:])
    b = y.float().reshape(n * c, 1, *y.shape[-2:])
    win = gaussian_window(cfg.window_size, cfg.sigma)
    factors = []
    for level in range(levels):
        s, cs = _ssim_and_cs(a, b, win, data_range)
        if level < levels - 1:
            factors.append(torch.relu(cs))
            pad = [d % 2 for d in a.shape[-2:]]
            a = F.avg_pool2d(a, 2, padding=pad)
            b = F.avg_pool2d(b, 2, padding=pad)
    factors.append(torch.relu(s))
    w = torch.tensor(cfg.weights, dtype=a.dtype).view(-1, 1)
    value = torch.prod(torch.stack(factors) ** w, dim=0)
    return value.view(n, c).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Per-image PSNR = 10 log10(MAX^2 / MSE); MAX = 1 for [0, 1] floats (``methods.md`` §8)."""
    _check_pair(x, y)
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(max_value**2 / mse)).float()


# --- pairing protocols -------------------------------------------------------------------------------------------


def random_pairs(n_a: int, n_b: int, n_pairs: int, seed: int, distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random index pairs; with ``distinct`` (one set against itself) never an image with itself."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n_a, (n_pairs,), generator=g)
    if distinct:
        if n_a < 2:
            raise ValueError("fake-fake pairs need at least 2 images")
        j = (i + torch.randint(1, n_a, (n_pairs,), generator=g)) % n_a  # uniform over the other images
    else:
        j = torch.randint(0, n_b, (n_pairs,), generator=g)
    return i, j


def nearest_by_mse(fake: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of the nearest real image (pixel MSE) for every fake image; memory O(chunk x n_real)."""
    r = real.flatten(1).float()
    r2 = (r * r).sum(1)
    out = []
    for f in fake.flatten(1).float().split(chunk):
        d = (f * f).sum(1, keepdim=True) - 2 * f @ r.T + r2
        out.append(d.argmin(1))
    return torch.cat(out)


def real_fake_pairs(real: torch.Tensor, fake: torch.Tensor, protocol: str, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images {tuple(real.shape[1:])} and synthetic images {tuple(fake.shape[1:])} differ in size; "
                         "pixel metrics compare images of one size")
    if protocol == "paired":
        if real.shape[0] != fake.shape[0]:
            raise ValueError(f"protocol 'paired' needs as many real as synthetic images ({real.shape[0]} vs {fake.shape[0]})")
        idx = torch.arange(real.shape[0])
        return idx, idx
    if protocol == "nearest":
        fi = torch.arange(fake.shape[0])
        return nearest_by_mse(fake, real), fi
    ri, fi = random_pairs(real.shape[0], fake.shape[0], n_pairs, seed)
    return ri, fi


def _batched(fn: Any, a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, chunk: int = 256, **kw: Any) -> torch.Tensor:
    return torch.cat([fn(a[x], b[y], **kw) for x, y in zip(ia.split(chunk), ib.split(chunk))])


# --- registered metrics ------------------------------------------------------------------------------------------


class PairOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: Literal["random", "paired", "nearest"] = "random"
    n_pairs: int = Field(1000, ge=2, description="pairs for the random protocols")
    fake_fake: bool = Field(True, description="also report fake-fake diversity (random distinct pairs)")


def _pair_metric(ctx: EvaluationContext, name: str, fn: Any, protocol: str, n_pairs: int, fake_fake: bool,
                 lower_is_better: bool, policy_extra: dict[str, Any], cap: float | None = None, **kw: Any) -> list[MetricResult]:
    real, fake = ctx.pixels("real"), ctx.pixels("fake")
    ri, fi = real_fake_pairs(real, fake, protocol, n_pairs, ctx.seed)
    policy = {**PIXEL_POLICY, **policy_extra}

    def summarise(values: torch.Tensor, result_name: str, n: dict[str, int], better: bool | None, details: dict[str, Any],
                  pairs: tuple[torch.Tensor, torch.Tensor, list[int], bool] | None) -> MetricResult:
        warnings = []
        if cap is not None:
            # identical pairs have MSE 0 and PSNR +inf: a mean with one +inf is +inf (written as null) while its
            # bootstrap interval, over finite replicates, looked finite. Count them at the cap instead, and say so.
            n_inf = int(torch.isinf(values).sum())
            values = values.clamp(max=cap)
            details = {**details, "cap_db": cap, "identical_pairs": n_inf}
            if n_inf:
                warnings.append(f"{result_name}: {n_inf} of {len(values)} pairs are pixel-identical (MSE 0, PSNR +inf); counted as {cap:g} dB")
        r = MetricResult(result_name, float(values.mean()), None, n, better, {**details, "std": float(values.std())}, policy, warnings)
        # random pairs reuse images: the interval resamples images (pair_mean_interval); paired / nearest pairs are one per item
        iv = (pair_mean_interval(values, pairs[0], pairs[1], pairs[2], seed=ctx.seed, same_set=pairs[3]) if pairs is not None
              else mean_interval(values, seed=ctx.seed))
        return apply_interval(r, iv)

    values = _batched(fn, real, fake, ri, fi, **kw)
    out = [summarise(values, f"{name}_real_fake", {"real": real.shape[0], "fake": fake.shape[0], "pairs": len(values)}, lower_is_better,
                     {"protocol": protocol}, (ri, fi, [real.shape[0], fake.shape[0]], False) if protocol == "random" else None)]
    if fake_fake:
        a, b = random_pairs(fake.shape[0], fake.shape[0], n_pairs, ctx.seed + 1, distinct=True)
        ff = _batched(fn, fake, fake, a, b, **kw)
        out.append(summarise(ff, f"{name}_fake_fake", {"fake": fake.shape[0], "pairs": len(ff)}, None,
                             {"protocol": "random distinct synthetic pairs (diversity)"}, (a, b, [fake.shape[0]], True)))
    return out


class PSNROptions(PairOptions):
    cap_db: float = Field(100.0, gt=0, description="PSNR of pixel-identical pairs (+inf) is counted at this value")


@register_metric("psnr", args=PSNROptions, summary="peak signal-to-noise ratio, MAX = 1 for [0, 1] floats (dB)",
                 policy={**PIXEL_POLICY, "max": 1.0})
def psnr_metric(ctx: EvaluationContext, protocol: str, n_pairs: int, fake_fake: bool, cap_db: float) -> list[MetricResult]:
    return _pair_metric(ctx, "psnr", psnr, protocol, n_pairs, fake_fake, False, {"max": 1.0}, cap=cap_db)


class SSIMOptions(PairOptions):
    window_size: int = Field(11, ge=3)
    sigma: float = Field(1.5, gt=0)


@register_metric("ssim", args=SSIMOptions, summary="structural similarity (Gaussian 11x11, sigma 1.5)", policy={**PIXEL_POLICY})
def ssim_metric(ctx: EvaluationContext, protocol: str, n_pairs: int, fake_fake: bool, window_size: int, sigma: float) -> list[MetricResult]:
    return _pair_metric(ctx, "ssim", ssim, protocol, n_pairs, fake_fake, False, {"window_size": window_size, "sigma": sigma},
                        window_size=window_size, sigma=sigma)


@register_metric("ms-ssim", args=PairOptions, summary="multi-scale SSIM; fake-fake near 1 signals mode collapse", policy={**PIXEL_POLICY})
def ms_ssim_metric(ctx: EvaluationContext, protocol: str, n_pairs: int, fake_fake: bool) -> list[MetricResult]:
    size = min(ctx.pixels("fake").shape[-2:])
    cfg = ms_ssim_config(size)
    return _pair_metric(ctx, "ms_ssim", ms_ssim, protocol, n_pairs, fake_fake, False, {"ms_ssim": cfg.describe()}, config=cfg)
