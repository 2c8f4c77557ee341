"""In-training evaluation hooks: cheap metrics every N steps, and best-checkpoint selection.

An evaluation callback is registered in :data:`EVAL_CALLBACKS` with an argument model. The trainer
builds it as ``EVAL_CALLBACKS.build(name, args, real=<ImageDataset>)`` and, every ``every`` steps
(on rank 0 only), calls it with a sampling function::

    sample(n: int, seed: int) -> torch.Tensor  # (n, C, H, W) float32 in [0, 1], from the EMA generator

The callback returns ``{metric_name: value}``. Its ``lower_is_better`` attribute tells the trainer how
to rank checkpoints when the run's ``best_metric`` names one of its metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.registry import Registry

SampleFn = Callable[[int, int], torch.Tensor]


class EvalCallback(Protocol):
    lower_is_better: bool

    def __call__(self, sample: SampleFn, step: int) -> dict[str, float]: ...


EVAL_CALLBACKS: Registry[Any] = Registry("evaluation callback")


class PixelStatsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(256, ge=8, description="number of synthetic and real images compared")
    bins: int = Field(64, ge=8, le=1024)
    seed: int = 12345


def pixel_statistics_distance(real: torch.Tensor, fake: torch.Tensor, bins: int = 64) -> dict[str, float]:
    """Distribution statistics of grey patches that need no pretrained network.

    - ``hist_w1``: 1-D Wasserstein distance between the pooled pixel-intensity distributions;
    - ``spectrum_l1``: mean absolute difference of the log radially averaged power spectra, the
      property the phantom's 1/f^beta texture (and real parenchyma) is defined by;
    - ``std_gap``: absolute difference of the mean per-image standard deviation (contrast).
    """
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


@EVAL_CALLBACKS.register("pixel_stats", args=PixelStatsArgs, summary="intensity-histogram W1 and power-spectrum distance to the real data (no network needed)")
class PixelStatsCallback:
    lower_is_better = True

    def __init__(self, n: int, bins: int, seed: int, real: Any):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(real), generator=g)[:n]
        self.real = torch.stack([real[int(i)][0] for i in idx])
        self.n, self.bins, self.seed = len(idx), bins, seed

    def __call__(self, sample: SampleFn, step: int) -> dict[str, float]:
        fake = sample(self.n, self.seed)
        return pixel_statistics_distance(self.real, fake.cpu(), self.bins)
