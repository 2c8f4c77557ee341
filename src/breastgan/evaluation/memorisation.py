"""Memorisation: is each synthetic image closer to a training image than new real images are?

For every synthetic image the nearest training image is found in three spaces:

- pixel: RMSE on [0, 1] pixels, over the synthetic image and its horizontal, vertical and double flips
  (a flipped copy of a training image is still a copy);
- SSIM: 1 - SSIM, evaluated on the ``ssim_candidates`` pixel-nearest training images (all flips).
  An exhaustive SSIM search is n_fake x n_train x 4 windowed comparisons; the pixel shortlist is the
  stated approximation;
- feature: Euclidean distance between extractor features (flips optional: they double the
  extractor's cost).

The reference is the same nearest-training distance for held-out real images, which are new samples
of the real distribution; without a held-out set, each training image's nearest *other* training
image (leave-one-out) is used and the output says so. A synthetic image is flagged as a near-copy when
its distance is below the ``quantile`` (default 1%) of the reference distances in the pixel or the
SSIM space. ``nn_ratio_<space>`` is median(synthetic distance) / median(reference distance): values
well below 1 mean the generator reproduces training images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import mean_ci, percentile_ci
from breastgan.evaluation.context import PIXEL_POLICY, EvaluationContext, MetricResult, register_metric
from breastgan.evaluation.ssim import ssim

FLIPS: dict[str, tuple[int, ...]] = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def pixel_candidates(query: torch.Tensor, train: torch.Tensor, k: int, exclude_self: bool = False, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k nearest (train index, flip index) per query image by pixel RMSE over all flips of the query.

    Returns (distances (n, k), train indices (n, k), flip indices (n, k)), nearest first.
    """
    t = train.flatten(1).float()
    t2 = (t * t).sum(1)
    npix = t.shape[1]
    n = query.shape[0]
    dists, idx, flips = [], [], []
    for start in range(0, n, chunk):
        q = query[start : start + chunk]
        per_flip = []
        for dims in FLIPS.values():
            f = _flip(q, dims).flatten(1).float()
            d2 = ((f * f).sum(1, keepdim=True) - 2 * f @ t.T + t2).clamp(min=0) / npix
            if exclude_self:
                rows = torch.arange(q.shape[0])
                d2[rows, rows + start] = float("inf")
            per_flip.append(d2)
        all_d = torch.stack(per_flip, 1).flatten(1)  # (b, flips * n_train)
        kk = min(k, all_d.shape[1])
        v, i = all_d.topk(kk, largest=False)
        dists.append(v.sqrt())
        idx.append(i % t.shape[0])
        flips.append(i // t.shape[0])
    return torch.cat(dists), torch.cat(idx), torch.cat(flips)


def ssim_nearest(query: torch.Tensor, train: torch.Tensor, idx: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Among the shortlisted (train, flip) candidates, the highest SSIM: (1 - SSIM, train index, flip index)."""
    flip_dims = list(FLIPS.values())
    n, k = idx.shape
    q = torch.stack([_flip(query[i], flip_dims[int(f)]) for i in range(n) for f in flips[i]])
    t = train[idx.flatten()]
    s = torch.cat([ssim(a, b) for a, b in zip(q.split(512), t.split(512))]).view(n, k)
    best = s.argmax(1)
    rows = torch.arange(n)
    return 1 - s[rows, best], idx[rows, best], flips[rows, best]


def feature_nearest(query: torch.Tensor, train: torch.Tensor, exclude_self: bool = False, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    out_d, out_i = [], []
    for start in range(0, query.shape[0], chunk):
        d = torch.cdist(query[start : start + chunk].double(), train.double())
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        v, i = d.min(1)
        out_d.append(v.float())
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)


class MemorisationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantile: float = Field(0.01, gt=0, lt=0.5, description="near-copy threshold: this quantile of the reference distances")
    ssim_candidates: int = Field(8, ge=1, description="pixel-nearest (image, flip) candidates re-ranked by SSIM")
    feature_space: bool = True
    extractor: Any = None
    max_fake: int = Field(5000, ge=1)
    show_pairs: int = Field(12, ge=0, description="nearest pairs kept for the report")


@register_metric("memorisation", args=MemorisationOptions, summary="nearest training image per synthetic image vs held-out real images",
                 policy={**PIXEL_POLICY, "flips": "none, h, v, hv of the synthetic image", "features": "extractor input policy"})
def memorisation_metric(ctx: EvaluationContext, quantile: float, ssim_candidates: int, feature_space: bool, extractor: Any,
                        max_fake: int, show_pairs: int) -> list[MetricResult]:
    train = ctx.pixels("train")
    fake = ctx.pixels("fake")[:max_fake]
    if train.shape[1:] != fake.shape[1:]:
        raise ValueError(f"training images {tuple(train.shape[1:])} and synthetic images {tuple(fake.shape[1:])} differ in size")
    has_heldout = ctx.heldout is not None
    ref_imgs = ctx.pixels("heldout") if has_heldout else train
    reference = "held-out real images" if has_heldout else "leave-one-out: each training image vs the other training images"

    spaces: dict[str, dict[str, torch.Tensor]] = {}
    fd, fi, ff = pixel_candidates(fake, train, ssim_candidates)
    rd, ri, rf = pixel_candidates(ref_imgs, train, ssim_candidates, exclude_self=not has_heldout)
    spaces["pixel"] = {"fake": fd[:, 0], "ref": rd[:, 0], "idx": fi[:, 0], "flip": ff[:, 0]}
    s_fake, s_idx, s_flip = ssim_nearest(fake, train, fi, ff)
    s_ref, _, _ = ssim_nearest(ref_imgs, train, ri, rf)
    spaces["ssim"] = {"fake": s_fake, "ref": s_ref, "idx": s_idx, "flip": s_flip}
    feat_info: dict[str, Any] = {}
    if feature_space:
        f_train = ctx.features("train", extractor)
        f_fake = ctx.features("fake", extractor)
        f_ref = ctx.features("heldout", extractor) if has_heldout else f_train
        if f_train.features is None or f_fake.features is None or f_ref.features is None:
            raise ValueError("memorisation in feature space needs feature rows")
        d_fake, i_fake = feature_nearest(f_fake.features[:max_fake], f_train.features)
        d_ref, _ = feature_nearest(f_ref.features, f_train.features, exclude_self=not has_heldout)
        spaces["feature"] = {"fake": d_fake, "ref": d_ref, "idx": i_fake, "flip": torch.zeros_like(i_fake)}
        feat_info = {"extractor": f_fake.extractor, "feature_flips": False}

    flagged = torch.zeros(fake.shape[0], dtype=torch.bool)
    thresholds = {}
    for name in ("pixel", "ssim"):
        thr = float(torch.quantile(spaces[name]["ref"].double(), quantile))
        thresholds[name] = thr
        flagged |= spaces[name]["fake"] < thr

    n = {"train": train.shape[0], "fake": fake.shape[0], "reference": ref_imgs.shape[0]}
    results = []
    rng = np.random.default_rng(ctx.seed)
    for name, sp in spaces.items():
        a, b = sp["fake"].double(), sp["ref"].double()
        ratio = float(a.median() / b.median()) if float(b.median()) > 0 else float("inf")
        boot = [float(a[rng.integers(0, len(a), len(a))].median() / b[rng.integers(0, len(b), len(b))].median()) for _ in range(ctx.n_boot)]
        results.append(MetricResult(f"nn_ratio_{name}", ratio, percentile_ci(boot) if ctx.n_boot else None, n, False,
                                    {"median_fake_to_train": float(a.median()), "median_reference_to_train": float(b.median()),
                                     "distance": {"pixel": "RMSE over flips", "ssim": "1 - SSIM over flips (pixel shortlist)", "feature": "Euclidean"}[name],
                                     "reference": reference, **(feat_info if name == "feature" else {})}))
    results.append(MetricResult("near_copy_fraction", float(flagged.float().mean()), mean_ci(flagged.float(), seed=ctx.seed), n, True,
                                {"rule": f"pixel or SSIM distance below the {quantile:.0%} quantile of the reference", "thresholds": thresholds,
                                 "n_flagged": int(flagged.sum()), "reference": reference},
                                warnings=[f"{int(flagged.sum())} synthetic images look like near-copies of training images"] if bool(flagged.any()) else []))

    order = torch.argsort(spaces["pixel"]["fake"] / max(thresholds["pixel"], 1e-12))[:show_pairs]
    flip_names = list(FLIPS)
    ctx.artefacts["nearest_pairs"] = [
        {"fake": fake[int(j)], "train": _flip(train[int(spaces["pixel"]["idx"][j])], FLIPS[flip_names[int(spaces["pixel"]["flip"][j])]]),
         "pixel_rmse": float(spaces["pixel"]["fake"][j]), "ssim": 1 - float(spaces["ssim"]["fake"][j]), "flagged": bool(flagged[j]),
         "train_index": int(spaces["pixel"]["idx"][j]), "flip": flip_names[int(spaces["pixel"]["flip"][j])]}
        for j in order.tolist()
    ]
    ctx.artefacts["memorisation_distances"] = {name: {"fake": sp["fake"].numpy(), "reference": sp["ref"].numpy()} for name, sp in spaces.items()}
    return results
