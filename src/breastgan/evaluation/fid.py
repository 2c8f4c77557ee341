"""Fréchet distance between Gaussians fitted to features (FID when the features are Inception's).

FID = ||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2)).

Why not ``scipy.linalg.sqrtm``: it takes ~13 s for 2048-d here and returns complex values with
rounding-noise imaginary parts. Only the trace of the square root is needed, and it is the sum of
the square roots of the eigenvalues of S_1 S_2. With a Cholesky factor S_1 = L L^T, S_1 S_2 is
similar to the symmetric L^T S_2 L, whose eigenvalues a symmetric solver returns real and
non-negative up to rounding: one O(D^3/3) factorisation plus one symmetric eigenvalue problem.
When neither covariance is positive definite (fewer samples than dimensions), the square root of
S_1 comes from its own eigen-decomposition instead, which is slower but exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import Interval, apply_interval, finish_interval, half_sampling_ci, small_n_warning
from breastgan.evaluation.context import EvaluationContext, MetricResult, register_metric


def _symmetric_eigvals(m: np.ndarray) -> torch.Tensor:
    # eigenvalues only: LAPACK ?syevd with jobz='N' (tridiagonalisation + root-free QR), ~1 s for D = 2048 on 2 cores
    a = (m + m.T) * 0.5
    return torch.from_numpy(scipy.linalg.eigh(a, eigvals_only=True, driver="evd", check_finite=False))


def _cholesky_congruence(chol: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """L^T B L with two triangular multiplies (BLAS ?trmm): half the work of two general matmuls."""
    from scipy.linalg.blas import dtrmm

    lf = np.asfortranarray(chol.numpy())
    bl = dtrmm(1.0, lf, np.asfortranarray(b.numpy()), side=1, lower=1)  # B L
    return dtrmm(1.0, lf, bl, side=0, lower=1, trans_a=1)  # L^T (B L)


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Tr((S_1 S_2)^(1/2)) for symmetric positive semi-definite S_1, S_2 (float64)."""
    s1 = sigma1.to(torch.float64)
    s2 = sigma2.to(torch.float64)
    for a, b in ((s1, s2), (s2, s1)):
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            m = _cholesky_congruence(chol, b)
            break
    else:
        w, v = torch.linalg.eigh(s1)
        root = (v * w.clamp(min=0).sqrt()) @ v.T
        m = (root @ s2 @ root).numpy()
    eig = _symmetric_eigvals(m)
    # negative eigenvalues are rounding noise of a PSD product; clamp rather than take complex roots
    return float(eig.clamp(min=0).sqrt().sum())


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    diff = mu1 - mu2
    value = float(diff @ diff) + float(sigma1.trace()) + float(sigma2.trace()) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return value


class FrechetReference:
    """A fixed (real) Gaussian whose Cholesky factor is computed once, for many distances (bootstrap, training)."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.sigma = torch.as_tensor(sigma, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(self.sigma)
        self.chol = chol if int(info) == 0 else None
        self.trace = float(self.sigma.trace())

    def distance(self, mu: torch.Tensor, sigma: torch.Tensor) -> float:
        mu = torch.as_tensor(mu, dtype=torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.chol is None:
            return frechet_distance(self.mu, self.sigma, mu, sigma)
        eig = _symmetric_eigvals(_cholesky_congruence(self.chol, sigma))
        diff = self.mu - mu
        return float(diff @ diff) + self.trace + float(sigma.trace()) - 2.0 * float(eig.clamp(min=0).sqrt().sum())


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (as ``np.cov``) of (N, D) features, in float64."""
    f = features.to(torch.float64)
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def frechet_distance_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID of two (N, D) feature sets; with fewer rows than dimensions via the Gram form (exact, and n^3 not D^3)."""
    n1, n2, d = features1.shape[0], features2.shape[0], features1.shape[1]
    if max(n1, n2) >= d:
        return frechet_distance(*feature_stats(features1), *feature_stats(features2))
    # S_1 = A^T A / (n_1 - 1), S_2 = B^T B / (n_2 - 1) with centred rows A, B. The non-zero eigenvalues of
    # S_1 S_2 are the squared singular values of A B^T / sqrt((n_1 - 1)(n_2 - 1)), so Tr((S_1 S_2)^(1/2)) is the
    # nuclear norm of that n_1 x n_2 matrix: no D x D matrix is ever formed.
    a = features1.to(torch.float64)
    b = features2.to(torch.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    a, b = a - mu1, b - mu2
    diff = mu1 - mu2
    tr1 = float((a * a).sum()) / (n1 - 1)
    tr2 = float((b * b).sum()) / (n2 - 1)
    nuclear = float(torch.linalg.svdvals(a @ b.T).sum()) / math.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff) + tr1 + tr2 - 2.0 * nuclear


def fid_ci(real: torch.Tensor, fake: torch.Tensor, estimate: float, n_rep: int, seed: int) -> Interval | None:
    """Half-sampling interval of FID over both sets (removes FID's 1/n bias to first order; see bootstrap.py)."""
    iv, _ = half_sampling_ci(lambda i, j: frechet_distance_features(real[i], fake[j]), [real.shape[0], fake.shape[0]], estimate,
                             n_rep, seed, bounds=(0.0, None), min_half=2)
    return iv


# --- FID extrapolated to infinite n (Chong & Forsyth 2020) ------------------------------------------------------


def fid_extrapolation(real: torch.Tensor, fake: torch.Tensor, *, points: int = 5, draws: int = 2, min_fraction: float = 0.3,
                      seed: int = 0) -> dict[str, Any]:
    """FID against 1/n over subsets of both sets (without replacement), fitted by least squares.

    FID_N = FID_inf + k / N to first order (the bias of the covariance square-root term is O(1/N));
    the subset sizes are fractions ``min_fraction .. 1`` of each set, N the harmonic mean of the two
    subset sizes. Returns the intercept (``fid_inf``), the slope, R^2, the intercept's standard error
    and the points fitted.
    """
    n1, n2 = real.shape[0], fake.shape[0]
    if min(n1, n2) * min_fraction < 3:
        raise ValueError(f"fid_inf needs at least {math.ceil(3 / min_fraction)} images per set, got {n1} and {n2}")
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for f in np.linspace(min_fraction, 1.0, points):
        m1, m2 = max(3, int(round(f * n1))), max(3, int(round(f * n2)))
        reps = 1 if (m1 == n1 and m2 == n2) else draws  # the full sets have one subset only
        for _ in range(reps):
            i = torch.randperm(n1, generator=g)[:m1]
            j = torch.randperm(n2, generator=g)[:m2]
            xs.append(0.5 * (1.0 / m1 + 1.0 / m2))
            ys.append(frechet_distance_features(real[i], fake[j]))
    x, y = np.asarray(xs), np.asarray(ys)
    design = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = max(1, len(x) - 2)
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return {"fid_inf": float(coef[0]), "slope": float(coef[1]), "r2": r2, "intercept_se": float(math.sqrt(max(cov[0, 0], 0.0))),
            "dof": dof, "points": [{"n": 1.0 / xi, "fid": yi} for xi, yi in zip(xs, ys)]}


# --- registered metrics ------------------------------------------------------------------------------------------


class FIDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Any = Field(None, description="extractor spec; default: the evaluation's (inception-fid)")
    n_boot: int | None = Field(20, ge=0, description="half-sampling replicates over both sets (0: no interval)")


@register_metric("fid", args=FIDOptions, summary="Fréchet distance of Inception features (lower is better)",
                 policy={"features": "extractor input policy (see details.extractor)", "statistics": "float64 running sums"},
                 min_n={"real": 2, "fake": 2})
def fid_metric(ctx: EvaluationContext, extractor: Any, n_boot: int | None) -> list[MetricResult]:
    real = ctx.features("real", extractor)
    fake = ctx.features("fake", extractor)
    value = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    details: dict[str, Any] = {"extractor": fake.extractor, "real_from_cache": real.from_cache,
                               "comparability": f"FID depends on n (bias ~ 1/n): compare only FIDs computed at equal n (here real {real.n}, "
                                                f"synthetic {fake.n}); fid_inf removes the 1/n term"}
    reps = ctx.n_boot if n_boot is None else n_boot
    result = MetricResult("fid", value, None, {"real": real.n, "fake": fake.n}, True, details, policy=fake.extractor["input_policy"])
    iv = None
    if reps:
        if real.features is None or fake.features is None or real.features.shape[0] < real.n or fake.features.shape[0] < fake.n:
            details["ci_skipped"] = "the interval resamples both sets and needs all feature rows (a cache entry held statistics only)"
        else:
            iv = fid_ci(real.features, fake.features, value, reps, ctx.seed)
    apply_interval(result, iv)
    warn = small_n_warning("fid", min(real.n, fake.n))
    result.warnings = [warn] if warn else []
    return [result]


class FIDInfOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Any = None
    points: int = Field(5, ge=3, description="subset sizes between min_fraction x n and n")
    draws: int = Field(2, ge=1, description="random subsets per size (the full size has one)")
    min_fraction: float = Field(0.3, gt=0, lt=1)
    n_boot: int | None = Field(20, ge=0, description="half-sampling replicates of the whole extrapolation, deviations centred (the "
                                                     "extrapolation has no 1/n term left to remove); 0: regression interval only")


@register_metric("fid_inf", args=FIDInfOptions, summary="FID extrapolated to infinite n (fit of FID vs 1/n, Chong & Forsyth 2020)",
                 policy={"features": "extractor input policy (see details.extractor)", "subsets": "without replacement, both sets"},
                 min_n={"real": 10, "fake": 10})
def fid_inf_metric(ctx: EvaluationContext, extractor: Any, points: int, draws: int, min_fraction: float, n_boot: int | None) -> list[MetricResult]:
    real = ctx.features("real", extractor)
    fake = ctx.features("fake", extractor)
    if real.features is None or fake.features is None:
        raise ValueError("fid_inf needs the feature rows of both sets, not only their statistics")
    fr, ff = real.features, fake.features
    kw = dict(points=points, draws=draws, min_fraction=min_fraction)
    fit = fid_extrapolation(fr, ff, seed=ctx.seed, **kw)
    value = fit["fid_inf"]
    details: dict[str, Any] = {"extractor": fake.extractor, "fit": {k: v for k, v in fit.items() if k != "fid_inf"},
                               "model": "FID_N = fid_inf + slope / N, least squares over subset sizes (N: harmonic mean of the two subset sizes)",
                               "note": "unlike FID, fid_inf does not depend on n to first order; it can be negative when the sets "
                                       "come from one distribution (the intercept of a noisy fit)"}
    reps = ctx.n_boot if n_boot is None else n_boot
    iv = None
    if reps:
        iv, _ = half_sampling_ci(lambda i, j: fid_extrapolation(fr[i], ff[j], seed=ctx.seed, **kw)["fid_inf"], [fr.shape[0], ff.shape[0]],
                                 value, reps, ctx.seed + 1, min_half=int(math.ceil(3 / min_fraction)), target="this-n")
    if iv is None:
        from scipy.stats import t as student_t

        half = float(student_t.ppf(0.975, fit["dof"])) * fit["intercept_se"]
        iv = finish_interval(value, value - half, value + half, "regression", len(fit["points"]),
                             notes=["subset FIDs share images, so the regression error understates the sampling error"])
    result = MetricResult("fid_inf", value, None, {"real": real.n, "fake": fake.n}, True, details, policy=fake.extractor["input_policy"])
    apply_interval(result, iv)
    if fit["r2"] < 0.5:
        result.warnings.append(f"fid_inf: FID vs 1/n fits poorly (R^2 = {fit['r2']:.2f}); the extrapolation is unreliable at this n")
    return [result]
