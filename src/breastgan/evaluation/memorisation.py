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

Blank images: an all-black background crop, padding or a collapsed generator's flat grey output is
near *every* smooth training image, so an absolute distance rule calls it a copy ("smooth" is not
"copied"). An image is *blank* when its within-image standard deviation is below ``blank_std`` or
fewer than ``blank_content`` of its pixels differ from the image's median by more than
``blank_delta`` (a tissue fraction that also works for non-black backgrounds). Blank synthetic
images are never flagged and blank reference images do not set the threshold; both counts, and the
rule, are in the result (``details.blank``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import apply_interval, half_sampling_intervals, mean_interval
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


class BlankRule(BaseModel):
    """When an image has too little content to be called a copy of anything (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    blank_std: float = Field(0.02, ge=0, description="within-image standard deviation on [0, 1] below which an image is blank")
    blank_content: float = Field(0.05, ge=0, le=1, description="minimum share of content pixels (|x - median| > blank_delta)")
    blank_delta: float = Field(0.05, ge=0, le=1, description="difference from the image median that makes a pixel content")

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) True where an image is blank."""
        x = images.float().flatten(1)
        std = x.std(1, unbiased=False)
        med = x.median(1, keepdim=True).values
        content = ((x - med).abs() > self.blank_delta).float().mean(1)
        return (std < self.blank_std) | (content < self.blank_content)

    def describe(self) -> dict[str, Any]:
        return {"rule": f"blank if std < {self.blank_std:g} or fewer than {self.blank_content:.0%} of pixels differ from the image "
                        f"median by more than {self.blank_delta:g}", **self.model_dump()}


def near_copy_thresholds(ref: dict[str, torch.Tensor], ref_blank: torch.Tensor, quantile: float) -> dict[str, float]:
    """Per space, the ``quantile`` of the reference distances of the non-blank reference images (all, if every one is blank)."""
    keep = ~ref_blank if bool((~ref_blank).any()) else torch.ones_like(ref_blank)
    return {name: float(torch.quantile(d[keep].double(), quantile)) for name, d in ref.items()}


class MemorisationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantile: float = Field(0.01, gt=0, lt=0.5, description="near-copy threshold: this quantile of the reference distances")
    ssim_candidates: int = Field(8, ge=1, description="pixel-nearest (image, flip) candidates re-ranked by SSIM")
    feature_space: bool = True
    extractor: Any = None
    max_fake: int = Field(5000, ge=1)
    show_pairs: int = Field(12, ge=0, description="nearest pairs kept for the report")
    blank: BlankRule = Field(default_factory=BlankRule)


@register_metric("memorisation", args=MemorisationOptions, summary="nearest training image per synthetic image vs held-out real images",
                 policy={**PIXEL_POLICY, "flips": "none, h, v, hv of the synthetic image", "features": "extractor input policy"},
                 min_n={"train": 2, "fake": 2, "heldout": 4})
def memorisation_metric(ctx: EvaluationContext, quantile: float, ssim_candidates: int, feature_space: bool, extractor: Any,
                        max_fake: int, show_pairs: int, blank: dict[str, Any]) -> list[MetricResult]:
    rule = BlankRule.model_validate(blank)
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

    fake_blank = rule.mask(fake)
    ref_blank = rule.mask(ref_imgs)
    thresholds = near_copy_thresholds({name: spaces[name]["ref"] for name in ("pixel", "ssim")}, ref_blank, quantile)
    flagged = torch.zeros(fake.shape[0], dtype=torch.bool)
    for name, thr in thresholds.items():
        flagged |= spaces[name]["fake"] < thr
    flagged &= ~fake_blank  # a blank image is near every smooth image: never a copy by this rule
    blank_info = {**rule.describe(), "synthetic_excluded": int(fake_blank.sum()), "reference_excluded": int(ref_blank.sum())}

    n = {"train": train.shape[0], "fake": fake.shape[0], "reference": ref_imgs.shape[0]}
    results = []
    for name, sp in spaces.items():
        a, b = sp["fake"].double(), sp["ref"].double()

        def ratio_of(x: torch.Tensor, y: torch.Tensor) -> float:
            my = float(y.median())
            return float(x.median()) / my if my > 0 else float("inf")

        ratio = ratio_of(a, b)
        iv = half_sampling_intervals(lambda i, j: {"r": ratio_of(a[i], b[j])}, [len(a), len(b)], {"r": ratio}, ctx.n_boot, ctx.seed,
                                     bounds={"r": (0.0, None)})["r"] if ctx.n_boot else None
        r = MetricResult(f"nn_ratio_{name}", ratio, None, n, False,
                         {"median_fake_to_train": float(a.median()), "median_reference_to_train": float(b.median()),
                          "distance": {"pixel": "RMSE over flips", "ssim": "1 - SSIM over flips (pixel shortlist)", "feature": "Euclidean"}[name],
                          "reference": reference, **(feat_info if name == "feature" else {})})
        results.append(apply_interval(r, iv))
    warnings = [f"{int(flagged.sum())} synthetic images look like near-copies of training images"] if bool(flagged.any()) else []
    if bool(fake_blank.any()):
        warnings.append(f"{int(fake_blank.sum())} of {fake.shape[0]} synthetic images are blank ({blank_info['rule']}) and were not "
                        "judged as near-copies")
    nc = MetricResult("near_copy_fraction", float(flagged.float().mean()), None, n, True,
                      {"rule": f"pixel or SSIM distance below the {quantile:.0%} quantile of the non-blank reference images' distances; "
                               "blank synthetic images are not flagged", "thresholds": thresholds,
                       "n_flagged": int(flagged.sum()), "reference": reference, "blank": blank_info},
                      warnings=warnings)
    results.append(apply_interval(nc, mean_interval(flagged.float(), seed=ctx.seed, bounds=(0.0, 1.0))))

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
