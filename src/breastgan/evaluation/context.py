"""The metric registry, the result record every metric returns, and the shared evaluation context.

A metric is a function ``metric(ctx, **options) -> list[MetricResult]`` registered in
:data:`METRICS` with a pydantic options model and its input policy (channels, resize, quantisation,
range). The :class:`EvaluationContext` gives metrics lazy, shared access to pixels and features, so
that Inception runs once per set however many metrics use its features, and real-set features
come from the on-disk cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from breastgan.evaluation.extractors import FeatureExtractor, build_extractor
from breastgan.evaluation.features import FeatureSet, cached_features, extract_features
from breastgan.evaluation.sources import ImageSource
from breastgan.registry import Registry

METRICS: Registry[Any] = Registry("metric")

# Input policies shared by the pixel metrics: they see breastgan's own float [0, 1] grey images.
PIXEL_POLICY = {"channels": "grey (1)", "resize": "none (native size; sets must share one size)", "quantisation": "none (float32)",
                "range": "[0, 1], data_range 1.0"}


class MetricSkipped(Exception):
    """A metric that cannot run with what it was given; the message says what is missing and how to supply it."""


@dataclass
class MetricResult:
    """One number with its uncertainty, sample counts and the choices that produced it."""

    name: str
    value: float
    ci: tuple[float, float] | None = None
    n: dict[str, int] = field(default_factory=dict)
    lower_is_better: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci95": list(self.ci) if self.ci is not None else None,
            "n": self.n,
            "lower_is_better": self.lower_is_better,
            "details": self.details,
            "input_policy": self.policy,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def metric_policy(name: str) -> dict[str, Any]:
    """The input policy a registered metric declares (its ``policy`` attribute)."""
    return dict(getattr(METRICS.get(name), "policy", {}))


@dataclass
class EvaluationContext:
    real: ImageSource
    fake: ImageSource
    train: ImageSource | None = None
    heldout: ImageSource | None = None
    extractor_spec: Any = "inception-fid"
    cache_dir: Path | None = None
    seed: int = 0
    n_boot: int = 200
    artefacts: dict[str, Any] = field(default_factory=dict)  # plots and tables for the report
    timings: dict[str, float] = field(default_factory=dict)
    _pixels: dict[str, torch.Tensor] = field(default_factory=dict)
    _features: dict[tuple[str, str], FeatureSet] = field(default_factory=dict)
    _extractors: dict[str, FeatureExtractor] = field(default_factory=dict)

    def source(self, role: str) -> ImageSource:
        src = {"real": self.real, "fake": self.fake, "train": self.train or self.real, "heldout": self.heldout}.get(role)
        if src is None:
            raise ValueError(f"no {role!r} images were given to this evaluation")
        return src

    def extractor(self, spec: Any = None) -> FeatureExtractor:
        spec = self.extractor_spec if spec is None else spec
        key = repr(spec) if not isinstance(spec, FeatureExtractor) else f"obj:{id(spec)}"
        if key not in self._extractors:
            self._extractors[key] = build_extractor(spec)
        return self._extractors[key]

    def pixels(self, role: str) -> torch.Tensor:
        if role == "train" and self.train is None:
            role = "real"
        src = self.source(role)
        key = f"{role}:{src.fingerprint() if src.kind != 'generator' else id(src)}"
        if key not in self._pixels:
            t0 = time.perf_counter()
            self._pixels[key] = src.load()
            self.timings[f"load {role} pixels"] = time.perf_counter() - t0
        return self._pixels[key]

    def features(self, role: str, extractor: Any = None) -> FeatureSet:
        """Features of all images of ``role``; real/train/held-out sets go through the on-disk cache."""
        if role == "train" and self.train is None:
            role = "real"  # the default training set is the real set: reuse its features, never extract twice
        ext = self.extractor(extractor)
        key = (role, repr(ext.describe()))
        if key not in self._features:
            src = self.source(role)
            if role == "fake" or src.kind == "generator":
                fs = extract_features(src, ext)
            else:
                fs = cached_features(src, ext, self.cache_dir)
            self._features[key] = fs
            self.timings[f"features {role} ({ext.name})"] = fs.seconds
        return self._features[key]


def check_min_n(name: str, ctx: EvaluationContext) -> None:
    """Skip a metric whose sets are below its declared minimum size, naming the set and where it came from."""
    for role, minimum in getattr(METRICS.get(name), "min_n", {}).items():
        if role == "heldout" and ctx.heldout is None:
            continue  # optional set: the metric falls back to leave-one-out
        src = ctx.source(role)
        if src.n < minimum:
            raise MetricSkipped(f"{name} needs at least {minimum} {role} images; {src.location} ({src.kind}) has {src.n}")


def run_metric(name: str, ctx: EvaluationContext, options: dict[str, Any] | None = None) -> list[MetricResult]:
    entry = METRICS.entry(name)
    opts = entry.validate_args(options, where=f"metrics.{name}")
    check_min_n(name, ctx)
    t0 = time.perf_counter()
    results: list[MetricResult] = entry.obj(ctx, **opts.model_dump())
    dt = time.perf_counter() - t0
    for r in results:
        r.seconds = r.seconds or dt
        if not r.policy:
            r.policy = metric_policy(name)
    return results


def register_metric(name: str, *, args: Any, policy: dict[str, Any], summary: str,
                    min_n: dict[str, int] | None = None) -> Callable[[Any], Any]:
    """``@register_metric(...)``: register in :data:`METRICS` and attach the declared input policy and the
    minimum set sizes (by role: real, fake, train, heldout) below which :func:`run_metric` skips it with the reason."""

    def deco(fn: Any) -> Any:
        fn.policy = policy
        fn.min_n = dict(min_n or {"real": 2, "fake": 2})
        return METRICS.register(name, args=args, summary=summary)(fn)

    return deco
