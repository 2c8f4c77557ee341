"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel, averaged over subsets.

Protocol as torch-fidelity (and Binkowski et al. 2018): k(x, y) = (gamma x.y + coef0)^degree with
degree 3, gamma 1/D, coef0 1; 100 random subsets of 1,000 per set drawn with
``numpy.random.RandomState(seed).choice(n, s, replace=False)`` (the same draws as torch-fidelity
for the same seed); the reported value is the mean and the std over subsets. The subset size is
min(1000, n_1, n_2) and is always reported, since a subset larger than the sample is impossible.

Speed and memory: for n_1, n_2 <= ``full_kernel_max_n`` the three kernel matrices are computed once
(3 n^2 float64, 96 MB at n = 2,000) and subsets index into them; above that each subset computes its
own 3 s^2 block. The interval is the half-sampling one of :mod:`breastgan.evaluation.bootstrap`
(both sets halved without replacement, unbiased MMD^2 recomputed on the sub-blocks of the full
kernel matrices); above ``full_kernel_max_n`` it is the spread of the subset estimates (conservative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import Interval, apply_interval, finish_interval, half_sampling_ci, percentile_ci
from breastgan.evaluation.context import EvaluationContext, MetricResult, register_metric


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> torch.Tensor:
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (x.to(torch.float64) @ y.to(torch.float64).T * g + coef0) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> float:
    """torch-fidelity's 'unbiased' estimator: within-set terms drop the diagonal, the cross term keeps it."""
    m = k_xx.shape[0]
    n = k_yy.shape[0]
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.sum() / (m * n))


@dataclass
class KIDResult:
    mean: float
    std: float
    subset_size: int
    subsets: int
    values: np.ndarray = field(repr=False)
    ci: tuple[float, float] | None = None
    ci_method: str = ""
    interval: Interval | None = None


def kernel_inception_distance(features1: torch.Tensor, features2: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 2020,
                              n_boot: int = 0, full_kernel_max_n: int = 4096, boot_seed: int = 0) -> KIDResult:
    """KID between two (N, D) feature sets (features1 is the first argument of torch-fidelity's function)."""
    n1, n2 = features1.shape[0], features2.shape[0]
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature dimensions differ: {features1.shape[1]} vs {features2.shape[1]}")
    s = min(subset_size, n1, n2)
    if s < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n1} and {n2}")
    f1 = features1.to(torch.float64)
    f2 = features2.to(torch.float64)
    kern = dict(degree=degree, gamma=gamma if gamma is not None else 1.0 / f1.shape[1], coef0=coef0)
    full = max(n1, n2) <= full_kernel_max_n
    if full:
        k11, k22, k12 = polynomial_kernel(f1, f1, **kern), polynomial_kernel(f2, f2, **kern), polynomial_kernel(f1, f2, **kern)
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for i in range(subsets):
        a = torch.from_numpy(rng.choice(n1, s, replace=False))
        b = torch.from_numpy(rng.choice(n2, s, replace=False))
        if full:
            values[i] = mmd2_unbiased(k11[a][:, a], k12[a][:, b], k22[b][:, b])
        else:
            x, y = f1[a], f2[b]
            values[i] = mmd2_unbiased(polynomial_kernel(x, x, **kern), polynomial_kernel(x, y, **kern), polynomial_kernel(y, y, **kern))
    result = KIDResult(float(values.mean()), float(values.std()), s, subsets, values)
    if n_boot > 0:
        if full:
            iv, _ = half_sampling_ci(lambda i, j: mmd2_unbiased(k11[i][:, i], k12[i][:, j], k22[j][:, j]), [n1, n2], result.mean,
                                     n_boot, boot_seed)
        else:
            lo, hi = percentile_ci(values)
            iv = finish_interval(result.mean, lo, hi, "subset-spread", subsets,
                                 notes=[f"2.5-97.5 percentiles of the {subsets} subset estimates (n above full_kernel_max_n={full_kernel_max_n}); "
                                        "wider than the interval of their mean"])
        result.interval = iv
        result.ci = iv.bounds if iv is not None else None
        result.ci_method = iv.method if iv is not None else ""
    return result


# --- registered metric -------------------------------------------------------------------------------------------


class KIDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Any = None
    subsets: int = Field(100, ge=1)
    subset_size: int = Field(1000, ge=2)
    degree: int = Field(3, ge=1)
    gamma: float | None = Field(None, description="None: 1 / feature dimension")
    coef0: float = 1.0
    seed: int = Field(2020, description="subset draws; 2020 is torch-fidelity's default rng_seed")
    full_kernel_max_n: int = Field(4096, ge=2, description="above this n, kernels are computed per subset (memory 3 s^2 x 8 B)")


@register_metric("kid", args=KIDOptions, summary="Kernel Inception Distance, unbiased MMD^2 with a cubic kernel (lower is better)",
                 policy={"features": "extractor input policy (see details.extractor)", "kernel": "(x.y / D + 1)^3, float64"}, min_n={"real": 4, "fake": 4})
def kid_metric(ctx: EvaluationContext, extractor: Any, subsets: int, subset_size: int, degree: int, gamma: float | None,
               coef0: float, seed: int, full_kernel_max_n: int) -> list[MetricResult]:
    real = ctx.features("real", extractor)
    fake = ctx.features("fake", extractor)
    if real.features is None or fake.features is None:
        raise ValueError("KID needs the feature rows, not only their statistics")
    r = kernel_inception_distance(real.features, fake.features, subsets=subsets, subset_size=subset_size, degree=degree,
                                  gamma=gamma, coef0=coef0, seed=seed, n_boot=ctx.n_boot, full_kernel_max_n=full_kernel_max_n,
                                  boot_seed=ctx.seed)
    details = {"std_over_subsets": r.std, "subset_size": r.subset_size, "subsets": r.subsets,
               "extractor": fake.extractor, "kernel": {"degree": degree, "gamma": gamma or f"1/{real.features.shape[1]}", "coef0": coef0},
               "note": "KID is unbiased at any n: the recommended metric for ranking models below a few thousand images"}
    warnings = []
    if r.subset_size < subset_size:
        warnings.append(f"KID subset size reduced from {subset_size} to {r.subset_size} (the smaller set has {r.subset_size} images)")
    res = MetricResult("kid", r.mean, None, {"real": real.n, "fake": fake.n}, True, details,
                       policy=fake.extractor["input_policy"], warnings=warnings)
    return [apply_interval(res, r.interval)]
