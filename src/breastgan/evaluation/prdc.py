"""Precision, recall, density and coverage: k-NN manifold estimates on features (Naeem et al. 2020).

- precision: share of synthetic samples inside some real sample's k-NN ball (fidelity);
- recall: share of real samples inside some synthetic sample's k-NN ball (Kynkäänniemi et al. 2019);
- density: mean number of real balls containing a synthetic sample, / k (fidelity, robust to outliers);
- coverage: share of real samples whose ball contains a synthetic sample (diversity).

Memory: distances are computed in chunks of ``chunk`` rows. Sets are capped at ``max_samples``
(10,000 as in Naeem et al.).

Intervals: half-sampling of both sets (bootstrap.py) with the k-NN radii *recomputed* in every
half-sample from the three distance matrices (real-real, fake-fake, fake-real; 3 n^2 float32, kept
only up to ``ci_max_n``). Resampling with replacement and fixed radii (the previous method) drops a
third of the synthetic balls, so recall and coverage replicates fell below their estimate.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import apply_interval, half_sampling_intervals, small_n_warning
from breastgan.evaluation.context import EvaluationContext, MetricResult, register_metric


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    b64 = b.double()
    return torch.cat([torch.cdist(x.double(), b64).float() for x in a.split(chunk)])


def knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (self excluded)."""
    if x.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {x.shape[0]}")
    out = []
    for start in range(0, x.shape[0], chunk):
        d = torch.cdist(x[start : start + chunk].double(), x.double())
        out.append(d.topk(k + 1, largest=False).values[:, k].float())  # index 0 is the sample itself
    return torch.cat(out)


def prdc_components(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """Per-sample indicator matrices from which every statistic (and its bootstrap) follows."""
    r_real = knn_radii(real, k)
    r_fake = knn_radii(fake, k)
    d = pairwise_distances(fake, real)  # (n_fake, n_real)
    in_real_ball = d <= r_real[None, :]  # fake j inside real i's ball
    in_fake_ball = d <= r_fake[:, None]  # real i inside fake j's ball
    return {"in_real_ball": in_real_ball, "in_fake_ball": in_fake_ball}


def prdc_from_components(c: dict[str, torch.Tensor], k: int, fake_idx: torch.Tensor | None = None) -> dict[str, float]:
    a, b = c["in_real_ball"], c["in_fake_ball"]
    if fake_idx is not None:
        a, b = a[fake_idx], b[fake_idx]
    return {
        "precision": float(a.any(1).float().mean()),
        "recall": float(b.any(0).float().mean()),
        "density": float(a.sum(1).float().mean() / k),
        "coverage": float(a.any(0).float().mean()),
    }


def _kth_other(d: torch.Tensor, k: int) -> torch.Tensor:
    return d.topk(k + 1, dim=1, largest=False).values[:, k]  # column 0 is the point itself (distance 0)


def prdc_from_distances(d_rr: torch.Tensor, d_ff: torch.Tensor, d_fr: torch.Tensor, k: int) -> dict[str, float]:
    """PRDC from the three distance matrices of (sub)sets, radii from these very sets."""
    r_real = _kth_other(d_rr, k)
    r_fake = _kth_other(d_ff, k)
    return prdc_from_components({"in_real_ball": d_fr <= r_real[None, :], "in_fake_ball": d_fr <= r_fake[:, None]}, k)


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    return prdc_from_components(prdc_components(real, fake, k), k)


class PRDCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1)
    extractor: Any = None
    max_samples: int = Field(10000, ge=10)
    n_boot: int | None = Field(50, ge=0, description="half-sampling replicates (radii recomputed in each)")
    ci_max_n: int = Field(5000, ge=10, description="above this n per set no interval (the three distance matrices would not fit)")


@register_metric("prdc", args=PRDCOptions, summary="precision / recall / density / coverage (k-NN manifolds on features; higher is better)",
                 policy={"features": "extractor input policy (see details.extractor)", "distance": "Euclidean, float64"},
                 min_n={"real": 12, "fake": 12})
def prdc_metric(ctx: EvaluationContext, k: int, extractor: Any, max_samples: int, n_boot: int | None, ci_max_n: int) -> list[MetricResult]:
    fr, ff = ctx.features("real", extractor), ctx.features("fake", extractor)
    if fr.features is None or ff.features is None:
        raise ValueError("precision/recall needs feature rows")
    real, fake = fr.features[:max_samples], ff.features[:max_samples]
    if min(len(real), len(fake)) <= 2 * k + 1:
        from breastgan.evaluation.context import MetricSkipped

        raise MetricSkipped(f"prdc with k={k} needs more than {2 * k + 1} images per set (half-samples must hold k+1); "
                            f"{ctx.source('real').location} has {len(real)}, {ctx.source('fake').location} has {len(fake)}")
    comp = prdc_components(real, fake, k)
    values = prdc_from_components(comp, k)
    reps = ctx.n_boot if n_boot is None else n_boot
    intervals: dict[str, Any] = {name: None for name in values}
    if reps and max(len(real), len(fake)) <= ci_max_n:
        d_rr = pairwise_distances(real, real)
        d_ff = pairwise_distances(fake, fake)
        d_fr = pairwise_distances(fake, real)
        intervals = half_sampling_intervals(lambda i, j: prdc_from_distances(d_rr[i][:, i], d_ff[j][:, j], d_fr[j][:, i], k),
                                            [len(real), len(fake)], values, reps, ctx.seed, min_half=k + 1, target="this-n",
                                            bounds={"precision": (0, 1), "recall": (0, 1), "coverage": (0, 1), "density": (0, None)})
    warn = small_n_warning("prdc", min(len(real), len(fake)))
    out = []
    for name, v in values.items():
        r = MetricResult(name, v, None, {"real": len(real), "fake": len(fake)}, False, {"k": k, "extractor": ff.extractor},
                         ff.extractor["input_policy"], [warn] if warn else [])
        out.append(apply_interval(r, intervals[name]))
    return out
