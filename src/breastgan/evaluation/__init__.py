"""Evaluation: distribution metrics with explicit input policies, uncertainty, and a self-contained report.

Importing this package registers every metric in :data:`METRICS` (one module per metric family) and
every feature extractor in :data:`EXTRACTORS`. Entry point: :func:`evaluate`.
"""

from breastgan.evaluation import fid, inception_score, kid, lpips_metric, memorisation, perceptual, pixel_stats, prdc, ssim, swd  # noqa: F401  (register metrics)
from breastgan.evaluation.api import DEFAULT_METRICS, evaluate
from breastgan.evaluation.context import METRICS, EvaluationContext, MetricResult, MetricSkipped
from breastgan.evaluation.extractors import EXTRACTORS, FeatureExtractor, InputPolicy, build_extractor

__all__ = ["evaluate", "DEFAULT_METRICS", "METRICS", "EXTRACTORS", "EvaluationContext", "MetricResult", "MetricSkipped",
           "FeatureExtractor", "InputPolicy", "build_extractor"]
