"""Distribution statistics of grey images that need no pretrained network (fast enough to run every few hundred steps).

- ``hist_w1``: 1-D Wasserstein distance between the pooled pixel-intensity distributions;
- ``spectrum_l1``: mean absolute difference of the log radially averaged power spectra, the property
  the phantom's 1/f^beta texture (and real parenchyma) is defined by;
- ``std_gap``: absolute difference of the mean per-image standard deviation (contrast).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.context import PIXEL_POLICY, EvaluationContext, MetricResult, register_metric


def pixel_statistics_distance(real: torch.Tensor, fake: torch.Tensor, bins: int = 64) -> dict[str, float]:
    r = real.float().flatten(1)
    f = fake.float().flatten(1)
    # W1 between empirical 1-D distributions = mean |sorted_r - sorted_f| on matched quantiles
    q = torch.linspace(0, 1, 1001)
    w1 = (torch.quantile(r.flatten()[:: max(1, r.numel() // 200_000)], q) - torch.quantile(f.flatten()[:: max(1, f.numel() // 200_000)], q)).abs().mean()
    spec_r = radial_log_spectrum(real)
    spec_f = radial_log_spectrum(fake)
    return {
        "hist_w1": float(w1),
        "spectrum_l1": float((spec_r - spec_f).abs().mean()),
        "std_gap": float((r.std(dim=1).mean() - f.std(dim=1).mean()).abs()),
    }


def radial_log_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean log power spectrum of (N, 1, H, W) images, averaged over rings of equal frequency."""
    x = images.float()[:, 0]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(0)
    h, w = power.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long()
    nbins = min(h, w) // 2
    mask = (radius > 0) & (radius < nbins)
    sums = torch.zeros(nbins).index_add_(0, radius[mask], power[mask])
    counts = torch.zeros(nbins).index_add_(0, radius[mask], torch.ones_like(power[mask]))
    return torch.log(sums[1:] / counts[1:] + 1e-12)


class PixelStatsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bins: int = Field(64, ge=8, le=1024, description="kept for configuration compatibility; the W1 uses 1001 quantiles")


@register_metric("pixel_stats", args=PixelStatsOptions, policy={**PIXEL_POLICY},
                 summary="intensity-histogram W1, power-spectrum and contrast distance to the real data (no network; lower is better)")
def pixel_stats(ctx: EvaluationContext, bins: int) -> list[MetricResult]:
    real, fake = ctx.pixels("real"), ctx.pixels("fake")
    values = pixel_statistics_distance(real, fake, bins)
    n = {"real": int(real.shape[0]), "fake": int(fake.shape[0])}
    return [MetricResult(name, v, n=n, lower_is_better=True) for name, v in values.items()]
