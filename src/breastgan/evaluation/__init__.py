"""Evaluation: distribution metrics with explicit input policies, uncertainty, and a self-contained report.

Importing this package registers every metric in :data:`METRICS` and every feature extractor in
:data:`EXTRACTORS`. Entry point: :func:`evaluate`.
"""

from breastgan.evaluation import fid, kid  # noqa: F401  (registers metrics)
from breastgan.evaluation.context import METRICS, EvaluationContext, MetricResult
from breastgan.evaluation.extractors import EXTRACTORS, FeatureExtractor, InputPolicy, build_extractor

__all__ = ["METRICS", "EXTRACTORS", "EvaluationContext", "MetricResult", "FeatureExtractor", "InputPolicy", "build_extractor"]
