"""Confidence intervals for every metric (one helper), and small-sample warnings.

Metrics on the 100-200 images typical of medical datasets are noisy, and several of them (FID, SWD,
recall, coverage) are *biased* at small n. Resampling with replacement makes that worse: a
bootstrap resample holds only ~63% distinct images, so a distance between sets is inflated and a
coverage-type rate deflated, and a percentile interval of such replicates can miss the estimate
entirely (FID 43.3 with a "95% CI" of [48.9, 55.8] before this module was rewritten).

Methods (``CI_METHODS``; each metric states which one it uses in ``details.ci``):

- ``half-sampling`` (default for two-set statistics: FID, KID, PRDC, SWD, memorisation ratios):
  m-out-of-n subsampling *without* replacement of both sets at m_i = floor(n_i / 2), the statistic
  recomputed on each half-sample pair, and the reverse-percentile ("basic") interval
  [t - s q_hi, t - s q_lo] of the deviations d = t_m - t with s = sqrt(m / (n - m)) (= 1 for even n).
  Why this: for a mean, Var(t_m - t_n) = sigma^2 (n - m) / (m n), which equals Var(t_n) = sigma^2 / n
  exactly at m = n / 2 (the finite-population correction cancels the halving); and for a
  statistic whose bias is c / n (FID; Chong & Forsyth 2020), E[t_m - t_n] = c/m - c/n = c/n is
  exactly its bias at n, so the reverse percentile removes it. No duplicates are ever created.
- ``bootstrap-percentile`` (per-item means: PSNR/SSIM pairs, near-copy fraction): the percentile
  interval of the mean over resamples with replacement (unbiased statistics, no duplicate artefact).
- ``regression`` (``fid_inf``): intercept +- t * standard error of a least-squares fit.

Whatever the method, the reported interval is widened to contain the point estimate when it does
not (``details.ci.extended`` says so, and by how much): the estimate at n is what the table shows,
and an interval for the population value may legitimately lie below a biased estimate, but a
reader must never see a value outside its own interval. Bounds of the statistic's range (0 for a
distance, [0, 1] for a rate) are applied after widening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

# Below these sample counts the metric is known to be biased or too noisy to rank models by.
MIN_RELIABLE_N = {
    "fid": 2000,  # FID's bias ~ 1/n is still several points at n = 2,000 (Binkowski et al. 2018; Chong & Forsyth 2020)
    "prdc": 1000,  # k-NN manifold estimates need dense sampling (Naeem et al. 2020 use 10,000)
    "swd": 500,
    "embedding-swd": 200,
}

CI_METHODS = {
    "half-sampling": "m-out-of-n subsampling without replacement of both sets at m = n/2, statistic recomputed; reverse-percentile "
                     "interval of the deviations scaled by sqrt(m/(n-m)) (removes a 1/n bias; no duplicated images)",
    "bootstrap-percentile": "percentile interval of the mean over resamples with replacement of the per-item values",
    "regression": "least-squares intercept +- t(0.975, dof) x standard error",
}


@dataclass
class Interval:
    """A confidence interval with the record of how it was made (``describe()`` goes to ``details.ci``)."""

    lo: float
    hi: float
    method: str
    replicates: int
    level: float = 0.95
    extended: float = 0.0  # how far the raw interval was widened to reach the estimate (0: not at all)
    notes: list[str] = field(default_factory=list)

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "description": CI_METHODS.get(self.method, self.method), "replicates": self.replicates,
                             "level": self.level, "extended_to_estimate": self.extended > 0}
        if self.extended > 0:
            d["extended_by"] = self.extended
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def percentile_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def finish_interval(estimate: float, lo: float, hi: float, method: str, replicates: int, *, level: float = 0.95,
                    bounds: tuple[float | None, float | None] = (None, None), notes: Sequence[str] = ()) -> Interval | None:
    """Widen [lo, hi] to contain ``estimate``, clip to the statistic's range; None when nothing finite is left."""
    if not math.isfinite(estimate) or not (math.isfinite(lo) and math.isfinite(hi)):
        return None  # no interval rather than a finite interval around an infinite or missing value
    lo, hi = min(lo, hi), max(lo, hi)
    extended = max(lo - estimate, estimate - hi, 0.0)
    lo, hi = min(lo, estimate), max(hi, estimate)
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return Interval(float(lo), float(hi), method, int(replicates), level, float(extended), list(notes))


def half_sample_indices(sizes: Sequence[int], n_rep: int, seed: int) -> list[list[torch.Tensor]]:
    """``n_rep`` draws of floor(n/2) indices without replacement from each set."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randperm(s, generator=g)[: max(1, s // 2)].sort().values for s in sizes] for _ in range(n_rep)]


def half_sampling_intervals(statistic: Callable[..., dict[str, float]], sizes: Sequence[int], estimates: dict[str, float], n_rep: int = 50,
                            seed: int = 0, level: float = 0.95, bounds: dict[str, tuple[float | None, float | None]] | None = None,
                            min_half: int = 2, target: str = "infinite-n") -> dict[str, Interval | None]:
    """Half-sampling intervals of several statistics computed together (``statistic`` returns a dict).

    ``target="infinite-n"``: the reverse percentile keeps the mean shift of the deviations, which removes a
    1/n bias (FID, distances whose population value is the n -> infinity limit). ``target="this-n"``: the
    deviations are centred on their mean first, giving an interval for E[statistic at this n], the
    population value of statistics defined at a given n (PRDC's k-NN balls shrink with n by design)."""
    if n_rep <= 0 or min(sizes) // 2 < min_half:
        return {k: None for k in estimates}
    reps = [statistic(*idx) for idx in half_sample_indices(sizes, n_rep, seed)]
    n = min(sizes)
    m = n // 2
    s = math.sqrt(m / (n - m))  # scale of the deviations (1 for even sizes); see the module docstring
    out: dict[str, Interval | None] = {}
    for key, est in estimates.items():
        v = np.array([r[key] for r in reps], dtype=np.float64)
        finite = v[np.isfinite(v)]
        if finite.size < max(2, n_rep // 2):
            out[key] = None
            continue
        dev = finite - est
        if target == "this-n":
            dev = dev - dev.mean()
        q_lo, q_hi = percentile_ci(dev, level)
        notes = [] if finite.size == v.size else [f"{v.size - finite.size} of {v.size} replicates were not finite and were dropped"]
        notes.append("target: the population value as n -> infinity (1/n bias removed)" if target == "infinite-n"
                     else "target: the expected value of the statistic at this n (deviations centred)")
        out[key] = finish_interval(est, est - s * q_hi, est - s * q_lo, "half-sampling", int(finite.size), level=level,
                                   bounds=(bounds or {}).get(key, (None, None)), notes=notes)
    return out


def half_sampling_ci(statistic: Callable[..., float], sizes: Sequence[int], estimate: float, n_rep: int = 50, seed: int = 0,
                     level: float = 0.95, bounds: tuple[float | None, float | None] = (None, None),
                     min_half: int = 2, target: str = "infinite-n") -> tuple[Interval | None, None]:
    """Reverse-percentile half-sampling interval of ``statistic(idx_1, ..., idx_k)`` (see the module docstring)."""
    iv = half_sampling_intervals(lambda *idx: {"v": statistic(*idx)}, sizes, {"v": estimate}, n_rep, seed, level, {"v": bounds}, min_half,
                                 target)
    return iv["v"], None


def mean_interval(per_item: torch.Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                  bounds: tuple[float | None, float | None] = (None, None)) -> Interval | None:
    """Percentile bootstrap of the mean of per-item values (vectorised index resampling)."""
    v = torch.as_tensor(per_item, dtype=torch.float64).flatten()
    if v.numel() < 2 or n_boot <= 0:
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    lo, hi = percentile_ci(v[idx].mean(1).numpy(), level)
    return finish_interval(float(v.mean()), lo, hi, "bootstrap-percentile", n_boot, level=level, bounds=bounds)


def pair_mean_interval(values: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, sizes: Sequence[int], n_rep: int = 200,
                       seed: int = 0, same_set: bool = False, bounds: tuple[float | None, float | None] = (None, None)) -> Interval | None:
    """Interval of a mean over random image pairs that accounts for the *images*, not only the pairs.

    1,000 random pairs of 100 images are not 1,000 independent items: resampling pairs ignores that
    every image appears in ~10 of them (the percentile bootstrap over pairs covered the population
    mean SSIM of two phantom distributions far below 95%). Half-sampling images of both sets (one
    set for fake-fake pairs) and averaging the pairs whose images are all in the half-samples gives
    the image-level variability; the pair-sampling noise is over-counted (a quarter of the pairs
    remain), which errs on the wide side.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2 or n_rep <= 0 or min(sizes) < 4:
        return None
    est = float(v.mean())

    def stat(*halves: torch.Tensor) -> dict[str, float]:
        ina = torch.zeros(sizes[0], dtype=torch.bool)
        ina[halves[0]] = True
        if same_set:
            keep = ina[idx_a] & ina[idx_b]
        else:
            inb = torch.zeros(sizes[1], dtype=torch.bool)
            inb[halves[1]] = True
            keep = ina[idx_a] & inb[idx_b]
        return {"v": float(v[keep].mean()) if bool(keep.any()) else float("nan")}

    return half_sampling_intervals(stat, list(sizes[:1] if same_set else sizes[:2]), {"v": est}, n_rep, seed, bounds={"v": bounds},
                                   target="this-n")["v"]


def mean_ci(per_item: torch.Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """CI of the mean of per-item values as a (lo, hi) tuple (NaNs when it cannot be formed)."""
    iv = mean_interval(per_item, n_boot, seed, level)
    return iv.bounds if iv is not None else (float("nan"), float("nan"))


def bootstrap(statistic: Callable[..., float], sizes: Sequence[int], n_boot: int = 200, seed: int = 0,
              level: float = 0.95) -> tuple[tuple[float, float], np.ndarray]:
    """Percentile CI of ``statistic(idx_1, ..., idx_k)`` over resamples with replacement of k index sets.

    Kept for unbiased statistics of per-item values; two-set distances use :func:`half_sampling_ci`."""
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        reps[b] = statistic(*(torch.from_numpy(rng.integers(0, s, size=s)) for s in sizes))
    return percentile_ci(reps, level), reps


def small_n_warning(metric: str, n: int) -> str | None:
    limit = MIN_RELIABLE_N.get(metric)
    if limit is None or n >= limit:
        return None
    advice = (" Below a few thousand images prefer KID (unbiased) for ranking models, and fid_inf for an n-free FID." if metric == "fid" else "")
    return f"{metric} on n={n} samples is biased/noisy (reliable from about {limit}); two values are comparable only at equal n.{advice}"


def apply_interval(result: Any, iv: Interval | None) -> Any:
    """Store an :class:`Interval` on a MetricResult (``ci`` and ``details.ci``)."""
    if iv is None:
        result.ci = None
        result.details.setdefault("ci", None)
    else:
        result.ci = iv.bounds
        result.details["ci"] = iv.describe()
        result.details["ci_method"] = f"{iv.method}: {CI_METHODS.get(iv.method, '')} ({iv.replicates} replicates)"
    return result
