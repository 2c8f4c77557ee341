"""Precision, recall, density and coverage: k-NN manifold estimates on features (Naeem et al. 2020).

- precision: share of synthetic samples inside some real sample's k-NN ball (fidelity);
- recall: share of real samples inside some synthetic sample's k-NN ball (Kynkäänniemi et al. 2019);
- density: mean number of real balls containing a synthetic sample, / k (fidelity, robust to outliers);
- coverage: share of real samples whose ball contains a synthetic sample (diversity).

Memory: distances are computed in chunks of ``chunk`` rows; the n_fake x n_real boolean ball matrices
(and one float32 distance matrix, 16 MB at 2,000 x 2,000) are kept for bootstrapping. Sets are capped
at ``max_samples`` (10,000 as in Naeem et al.).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import percentile_ci, small_n_warning
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


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    return prdc_from_components(prdc_components(real, fake, k), k)


class PRDCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1)
    extractor: Any = None
    max_samples: int = Field(10000, ge=10)
    n_boot: int | None = Field(200, ge=0)


@register_metric("prdc", args=PRDCOptions, summary="precision / recall / density / coverage (k-NN manifolds on features; higher is better)",
                 policy={"features": "extractor input policy (see details.extractor)", "distance": "Euclidean, float64"})
def prdc_metric(ctx: EvaluationContext, k: int, extractor: Any, max_samples: int, n_boot: int | None) -> list[MetricResult]:
    fr, ff = ctx.features("real", extractor), ctx.features("fake", extractor)
    if fr.features is None or ff.features is None:
        raise ValueError("precision/recall needs feature rows")
    real, fake = fr.features[:max_samples], ff.features[:max_samples]
    comp = prdc_components(real, fake, k)
    values = prdc_from_components(comp, k)
    reps = ctx.n_boot if n_boot is None else n_boot
    cis: dict[str, tuple[float, float] | None] = {name: None for name in values}
    if reps:
        rng = np.random.default_rng(ctx.seed)
        boot = [prdc_from_components(comp, k, torch.from_numpy(rng.integers(0, fake.shape[0], fake.shape[0]))) for _ in range(reps)]
        cis = {name: percentile_ci([b[name] for b in boot]) for name in values}
    warn = small_n_warning("prdc", min(len(real), len(fake)))
    details = {"k": k, "extractor": ff.extractor,
               "ci_method": f"bootstrap over synthetic samples ({reps}), radii fixed from the full sets" if reps else ""}
    return [MetricResult(name, v, cis[name], {"real": len(real), "fake": len(fake)}, False, details, ff.extractor["input_policy"],
                         [warn] if warn else []) for name, v in values.items()]
