"""Any registered evaluation metric during training, on a fixed real subset, for logging and best-checkpoint selection.

``train.eval: [{metric: kid, every: 500, n: 500}, {metric: swd, every: 1000}]``. Each entry runs the
evaluation suite's own metric function (``breastgan.evaluation``, the same code ``breastgan
evaluate`` runs) on ``n`` synthetic images from the recipe's ``synthesize`` (fixed seeds, EMA
modules) against a fixed seeded subset of at most ``n`` real images. Features of the real subset go
through the on-disk cache, so a run pays for them once. Intervals are off by default (``n_boot: 0``):
during training the value steers checkpoint selection, the full report comes from ``evaluate``.

Only rank 0 computes; the loop broadcasts the values (see trainer.py), so every rank takes the
same best-checkpoint decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from breastgan.config import ConfigError, EvalSpec

SynthesizeFn = Callable[[int, int], torch.Tensor]


class TrainingEvaluator:
    """One ``train.eval`` entry: its metric on (fixed real subset, fresh samples) every ``every`` steps."""

    def __init__(self, spec: EvalSpec, reference: Any):
        from breastgan.evaluation.context import METRICS
        from breastgan.evaluation.features import default_cache_dir
        from breastgan.evaluation.sources import from_dataset

        self.spec = spec
        self.entry = METRICS.entry(spec.metric)
        self.options = self.entry.validate_args(self._fill_n_boot(spec.metric_options()), where=f"train.eval.{spec.metric}")
        self.cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
        self.real = from_dataset(reference, min(spec.n, len(reference)), spec.seed)
        self._extractors: dict[str, Any] = {}
        self._real_features: dict[Any, Any] = {}

    def _fill_n_boot(self, options: dict[str, Any]) -> dict[str, Any]:
        fields = self.entry.args_model.model_fields
        if "n_boot" in fields and "n_boot" not in options:
            options = {**options, "n_boot": self.spec.n_boot}
        return options

    def synthesize(self, fn: SynthesizeFn) -> torch.Tensor:
        s = self.spec
        # fixed seeds per batch: successive evaluations differ only by the model
        return torch.cat([fn(min(s.sample_batch, s.n - a), s.seed + a).detach().float().cpu().clamp(0, 1) for a in range(0, s.n, s.sample_batch)])

    def __call__(self, fn: SynthesizeFn) -> dict[str, tuple[float, bool | None]]:
        """Metric results as ``{result name: (value, lower_is_better)}``, headline first."""
        from breastgan.evaluation.context import EvaluationContext
        from breastgan.evaluation.sources import from_tensor

        ctx = EvaluationContext(real=self.real, fake=from_tensor(self.synthesize(fn), name="generator samples"),
                                extractor_spec=self.spec.extractor, cache_dir=self.cache, seed=self.spec.seed, n_boot=self.spec.n_boot)
        # keep the extractor and the real features across calls (the context is rebuilt per call)
        ctx._extractors = self._extractors
        ctx._features.update(self._real_features)
        results = self.entry.obj(ctx, **self.options.model_dump())
        self._real_features.update({k: v for k, v in ctx._features.items() if k[0] == "real"})
        return {r.name: (float(r.value), r.lower_is_better) for r in results}


def best_metric_value(key: str, metric: str, values: dict[str, tuple[float, bool | None]]) -> tuple[float, bool]:
    """The value ``train.best_metric`` names, and whether lower is better; clear errors otherwise."""
    result = key.split("/", 1)[1] if "/" in key else next(iter(values))
    if result not in values:
        raise ConfigError(f"train.best_metric {key!r}: metric {metric!r} reports {sorted(values)}, not {result!r}")
    value, lower = values[result]
    if lower is None:
        raise ConfigError(f"train.best_metric {key!r}: {result!r} has no better direction (it is descriptive); choose another result")
    return value, lower


def is_better(value: float, lower: bool, best: float | None) -> bool:
    return math.isfinite(value) and (best is None or (value < best if lower else value > best))
