"""Bootstrap confidence intervals and small-sample warnings.

Metrics on the 100-200 images typical of medical datasets are noisy; every set metric in breastgan is
reported with n and a percentile-bootstrap interval. Metrics resample in the way that is cheap for
them (per-item values, kernel matrices, distance matrices) and pass a ``statistic(indices)``
closure here; what was resampled is stated in the metric's output.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

# Below these sample counts the metric is known to be biased or too noisy to rank models by.
MIN_RELIABLE_N = {
    "fid": 2000,  # FID's bias ~ 1/n is still several points at n = 2,000 (Binkowski et al. 2018; Chong & Forsyth 2020)
    "prdc": 1000,  # k-NN manifold estimates need dense sampling (Naeem et al. 2020 use 10,000)
    "swd": 500,
    "embedding-swd": 200,
}


def percentile_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def bootstrap(statistic: Callable[..., float], sizes: Sequence[int], n_boot: int = 200, seed: int = 0,
              level: float = 0.95) -> tuple[tuple[float, float], np.ndarray]:
    """Percentile CI of ``statistic(idx_1, ..., idx_k)`` over resamples with replacement of k index sets."""
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        reps[b] = statistic(*(torch.from_numpy(rng.integers(0, s, size=s)) for s in sizes))
    return percentile_ci(reps, level), reps


def mean_ci(per_item: torch.Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """CI of the mean of per-item (e.g. per-pair) values; vectorised since it is just index resampling."""
    v = torch.as_tensor(per_item, dtype=torch.float64).flatten()
    if v.numel() < 2:
        return (float("nan"), float("nan"))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    return percentile_ci(v[idx].mean(1).numpy(), level)


def small_n_warning(metric: str, n: int) -> str | None:
    limit = MIN_RELIABLE_N.get(metric)
    if limit is None or n >= limit:
        return None
    advice = " Prefer KID (unbiased) for ranking models at this size." if metric == "fid" else ""
    return f"{metric} on n={n} samples is biased/noisy (reliable from about {limit}); compare only at equal n.{advice}"
