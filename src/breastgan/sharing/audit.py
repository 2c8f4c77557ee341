"""Privacy audit of a generator: the attacks a recipient of the package could run, as an export gate.

Inputs: the model (any loaded kind, through ``synthesize(n, seed) -> (N, 1, H, W)`` in [0, 1], or
anything with ``sample(n, seed=...)``; a single noise generator or an inversion's generator also
enables the white-box attack; a translator is audited on its translations of the held-out images,
see :func:`audit_subject`), the training images, and held-out real images of the same distribution
that were NOT trained on.

Measured (every statistic with n and a bootstrap CI where it is a rate):

- near-copies: nearest training image of every synthetic image in pixel, SSIM and a feature
  space, all with flips (reusing :mod:`breastgan.evaluation.memorisation`); flagged when closer than
  the ``quantile`` of the held-out images' own nearest-training distances;
- DCR: distance to closest record (pixel RMSE over flips). For each synthetic image, the DCR to the
  training set vs the DCR to an equally large held-out set: ``dcr_ratio`` (median of their ratio)
  and ``dcr_closer`` (share nearer to training) are 1 and 0.5 without memorisation; the classic
  baseline ratio, median DCR(synthetic) / median DCR(held-out -> training), is reported too;
- membership inference on candidates (training members vs held-out non-members):
  black-box ``distance`` (minus the distance to the nearest synthetic sample) and ``density``
  (minus the mean distance to the k nearest samples, a k-NN density estimate; Hilprecht et al.
  2019), and white-box ``inversion`` (optimise z so that G(z) reconstructs the candidate; members
  reconstruct better; Hayes et al. 2019 / Chen et al. 2020 GAN-Leaks). Each gives AUC and TPR at
  1% FPR;
- canaries: planted training images; one is found when it is nearer to the samples than 99% of
  held-out images are, or when an attack ranks it above 99% of non-members.

The gate passes when every check holds (thresholds in :class:`AuditThresholds`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import percentile_ci
from breastgan.evaluation.memorisation import FLIPS, feature_nearest, pixel_candidates, ssim_nearest
from breastgan.registry import Registry


class AuditThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_near_copy_fraction: float = Field(0.05, ge=0, le=1, description="share of synthetic images flagged as near-copies")
    min_dcr_ratio: float = Field(0.85, ge=0, description="median over synthetic images of DCR(train) / DCR(held-out); 1 = no memorisation")
    max_dcr_closer: float = Field(0.6, ge=0, le=1, description="share of synthetic images nearer to training than to held-out images; 0.5 = none")
    max_mia_auc: float = Field(0.6, ge=0, le=1, description="best membership-inference AUC over the attacks")
    max_mia_tpr_at_1fpr: float = Field(0.1, ge=0, le=1, description="best TPR at 1% FPR over the attacks")
    max_canaries_found: int = Field(0, ge=0)


class InversionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    steps: int = Field(100, ge=1, le=10_000)
    lr: float = Field(0.05, gt=0)
    restarts: int = Field(2, ge=1, le=32)
    latent_penalty: float = Field(1e-3, ge=0, description="weight of |z|^2 / dim: keeps z where the prior puts mass")
    batch_size: int = Field(256, ge=1)


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_samples: int = Field(1000, ge=10, description="synthetic images drawn")
    seed: int = 0
    n_candidates: int = Field(200, ge=4, description="members and non-members each (capped by the set sizes)")
    quantile: float = Field(0.01, gt=0, lt=0.5, description="near-copy/canary threshold: this quantile of held-out distances")
    ssim_candidates: int = Field(8, ge=1)
    knn: int = Field(5, ge=1, description="k of the density attack")
    extractor: str | dict[str, Any] = Field("pooled-pixels", description="feature space: 'pooled-pixels' or an evaluation extractor spec")
    inversion: InversionOptions = Field(default_factory=InversionOptions)
    n_boot: int = Field(200, ge=0)
    thresholds: AuditThresholds = Field(default_factory=AuditThresholds)


class PrivacyGateError(ValueError):
    """The audit failed and the export was not forced; the message lists the failed checks."""


# -- feature spaces ------------------------------------------------------------------------------
FEATURE_SPACES: Registry[Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = Registry("audit feature space")


@FEATURE_SPACES.register("pooled-pixels", summary="average-pooled pixels at 8x8, 4x4 and 2x2 (no weights; cheap, structure not texture)")
def pooled_pixels() -> Callable[[torch.Tensor], torch.Tensor]:
    def features(x: torch.Tensor) -> torch.Tensor:
        pools = [torch.nn.functional.adaptive_avg_pool2d(x.float(), s).flatten(1) for s in (8, 4, 2)]
        return torch.cat(pools, 1)

    return features


def feature_function(spec: str | dict[str, Any]) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    if isinstance(spec, str) and spec in FEATURE_SPACES:
        return spec, FEATURE_SPACES.get(spec)()
    from breastgan.evaluation.extractors import build_extractor

    ext = build_extractor(spec)
    return ext.name, ext


# -- attack statistics ---------------------------------------------------------------------------
def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a member > score of a non-member), ties counted half (Mann-Whitney U / n_p n_n)."""
    scores = torch.cat([pos, neg]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse = scores.unique(return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_p, n_n = len(pos), len(neg)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


def tpr_at_fpr(pos: torch.Tensor, neg: torch.Tensor, fpr: float = 0.01) -> float:
    """Share of members scored above the threshold that lets at most ``fpr`` of non-members through."""
    neg_sorted = neg.double().sort(descending=True).values
    allowed = int(math.floor(fpr * len(neg)))
    threshold = neg_sorted[allowed] if allowed < len(neg) else -math.inf
    return float((pos.double() > threshold).double().mean())


def attack_summary(pos: torch.Tensor, neg: torch.Tensor, n_boot: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    aucs, tprs = [], []
    for _ in range(n_boot):
        p = pos[torch.from_numpy(rng.integers(0, len(pos), len(pos)))]
        q = neg[torch.from_numpy(rng.integers(0, len(neg), len(neg)))]
        aucs.append(roc_auc(p, q))
        tprs.append(tpr_at_fpr(p, q))
    return {
        "auc": roc_auc(pos, neg), "auc_ci95": percentile_ci(aucs) if n_boot else None,
        "tpr_at_1fpr": tpr_at_fpr(pos, neg), "tpr_at_1fpr_ci95": percentile_ci(tprs) if n_boot else None,
        "n_members": len(pos), "n_nonmembers": len(neg),
    }


# -- attacks -------------------------------------------------------------------------------------
def knn_distances(query: torch.Tensor, samples: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) pixel RMSE to the k nearest samples, over the four flips of each query."""
    d, _, _ = pixel_candidates(query, samples, k)
    return d


def generator_module(gen: Any) -> torch.nn.Module | None:
    models = getattr(gen, "models", None)
    if isinstance(models, list) and len(models) == 1 and isinstance(models[0], torch.nn.Module) and hasattr(models[0], "latent_dim"):
        return models[0]
    return None


def inversion_losses(G: torch.nn.Module, targets: torch.Tensor, opts: InversionOptions, seed: int) -> torch.Tensor:
    """Best reconstruction MSE of each target over restarts (and over classes for conditional G)."""
    from breastgan.generation.inversion import fit_latents

    return fit_latents(G, targets, steps=opts.steps, lr=opts.lr, restarts=opts.restarts, latent_penalty=opts.latent_penalty,
                       seed=seed, batch_size=opts.batch_size).losses


def draw_synthetic(generator: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` images from any loaded kind (``synthesize``; capped by its ``capacity``) or a ``sample`` object."""
    if hasattr(generator, "synthesize"):
        cap = getattr(generator, "capacity", None)
        if cap is not None and cap < 10:
            raise ValueError(f"the audit needs at least 10 synthetic images; this {getattr(generator, 'kind', '')} model can make {cap}"
                             + (" (bind input images to a translator first)" if cap == 0 else ""))
        return torch.as_tensor(generator.synthesize(n if cap is None else min(n, cap), seed=seed))
    return torch.as_tensor(generator.sample(n, seed=seed))


def audit_subject(gen: Any, holdout: torch.Tensor) -> Any:
    """What the audit samples: the model itself, or for a translator with no bound inputs, its
    translations of the held-out images in every direction (a translator that maps unseen images to
    training images is then caught by the near-copy and DCR checks)."""
    if getattr(gen, "kind", None) == "translation" and not gen.capacity:
        return gen.bind(holdout)
    return gen


# -- the audit -----------------------------------------------------------------------------------
def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n].sort().values]


def _check(name: str, value: float | None, threshold: float, rule: str, ci: Any = None) -> dict[str, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        passed = False
    else:
        passed = value <= threshold if rule == "<=" else value >= threshold
    return {"name": name, "value": value, "threshold": float(threshold), "rule": rule, "passed": bool(passed),
            "ci95": list(ci) if ci is not None else None}


def _as_images(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{what}: expected an (N, C, H, W) tensor of images in [0, 1]")
    x = x.detach().float().cpu()
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"{what}: pixel values must lie in [0, 1]")
    return x.clamp(0, 1)


def run_audit(generator: Any, train: torch.Tensor, holdout: torch.Tensor, config: AuditConfig | dict[str, Any] | None = None,
              canaries: torch.Tensor | None = None) -> dict[str, Any]:
    """The full audit; returns a JSON-able report with ``passed``, ``checks``, ``results`` and details."""
    cfg = config if isinstance(config, AuditConfig) else AuditConfig.model_validate(config or {})
    th = cfg.thresholds
    train = _as_images(train, "training images")
    holdout = _as_images(holdout, "held-out images")
    if train.shape[1:] != holdout.shape[1:]:
        raise ValueError(f"training images {tuple(train.shape[1:])} and held-out images {tuple(holdout.shape[1:])} differ in shape")
    if holdout.shape[0] < 10:
        raise ValueError(f"the audit needs at least 10 held-out images as the non-member reference, got {holdout.shape[0]}")
    fake = _as_images(draw_synthetic(generator, cfg.n_samples, cfg.seed), "synthetic images")
    if fake.shape[1:] != train.shape[1:]:
        raise ValueError(f"synthetic images {tuple(fake.shape[1:])} and training images {tuple(train.shape[1:])} differ in shape")

    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    # near-copies: pixel, SSIM (pixel shortlist), feature space; all with flips
    fd, fi, ff = pixel_candidates(fake, train, cfg.ssim_candidates)
    hd, hi, hf = pixel_candidates(holdout, train, cfg.ssim_candidates)
    s_fake, s_idx, s_flip = ssim_nearest(fake, train, fi, ff)
    s_hold, _, _ = ssim_nearest(holdout, train, hi, hf)
    fname, ffn = feature_function(cfg.extractor)
    feat_train = ffn(train)
    feat_fake = torch.stack([ffn(fake.flip(d) if d else fake) for d in FLIPS.values()])  # (4, n, D)
    per_flip = torch.stack([feature_nearest(feat_fake[k], feat_train)[0] for k in range(len(FLIPS))])
    f_fake = per_flip.min(0).values
    feat_hold = torch.stack([ffn(holdout.flip(d) if d else holdout) for d in FLIPS.values()])
    f_hold = torch.stack([feature_nearest(feat_hold[k], feat_train)[0] for k in range(len(FLIPS))]).min(0).values
    spaces = {"pixel": (fd[:, 0], hd[:, 0]), "ssim": (s_fake, s_hold), "feature": (f_fake, f_hold)}
    flagged = torch.zeros(fake.shape[0], dtype=torch.bool)
    thresholds_used = {}
    for space, (a, b) in spaces.items():
        t = float(torch.quantile(b.double(), cfg.quantile))
        thresholds_used[space] = t
        flagged |= a < t
        results[f"nn_ratio_{space}"] = float(a.median() / b.median()) if float(b.median()) > 0 else float("inf")
    results["near_copy_fraction"] = float(flagged.float().mean())
    order = torch.argsort(fd[:, 0])[:12]
    flip_names = list(FLIPS)
    details["nearest_pairs"] = [{"synthetic_index": int(j), "train_index": int(fi[j, 0]), "flip": flip_names[int(ff[j, 0])],
                                 "pixel_rmse": float(fd[j, 0]), "ssim": 1 - float(s_fake[j]), "flagged": bool(flagged[j])}
                                for j in order.tolist()]
    details["near_copy_thresholds"] = thresholds_used
    details["feature_space"] = fname

    # DCR: is each synthetic image nearer to the training set than to an equally large held-out set?
    # Comparing the two distances of the same synthetic image cancels what pixel distances reward
    # regardless of privacy (a blurry generator is near everything); 0.5 / 1.0 = no memorisation.
    m = min(train.shape[0], holdout.shape[0])
    d_tr = pixel_candidates(fake, _subset(train, m, cfg.seed + 6), 1)[0][:, 0]
    d_ho = pixel_candidates(fake, _subset(holdout, m, cfg.seed + 7), 1)[0][:, 0]
    ratio = d_tr / d_ho.clamp(min=1e-12)
    results["dcr_ratio"] = float(ratio.median())
    results["dcr_closer"] = float((d_tr < d_ho).double().mean())
    results["dcr_holdout_baseline_ratio"] = float(fd[:, 0].median() / hd[:, 0].median()) if float(hd[:, 0].median()) > 0 else float("inf")
    rng = np.random.default_rng(cfg.seed)
    boot_closer, boot_ratio = [], []
    for _ in range(cfg.n_boot):
        i = torch.from_numpy(rng.integers(0, len(ratio), len(ratio)))
        boot_closer.append(float((d_tr[i] < d_ho[i]).double().mean()))
        boot_ratio.append(float(ratio[i].median()))
    ci: dict[str, Any] = {"dcr_closer": percentile_ci(boot_closer) if boot_closer else None,
                          "dcr_ratio": percentile_ci(boot_ratio) if boot_ratio else None}
    details["dcr"] = {"compared_sets": m, "distance": "pixel RMSE over flips of the synthetic image",
                      "baseline": "dcr_holdout_baseline_ratio = median DCR(synthetic->train) / median DCR(held-out->train)"}

    # membership inference
    n_c = min(cfg.n_candidates, train.shape[0], holdout.shape[0])
    members = _subset(train, n_c, cfg.seed + 1)
    nonmembers = _subset(holdout, n_c, cfg.seed + 2)
    k = min(cfg.knn, fake.shape[0])
    d_mem, d_non = knn_distances(members, fake, k), knn_distances(nonmembers, fake, k)
    attacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "distance": (-d_mem[:, 0], -d_non[:, 0]),
        "density": (-d_mem.mean(1), -d_non.mean(1)),
    }
    G = generator_module(generator)
    if cfg.inversion.enabled and G is not None:
        losses = inversion_losses(G, torch.cat([members, nonmembers]), cfg.inversion, cfg.seed + 3)
        attacks["inversion"] = (-losses[:n_c], -losses[n_c:])
    else:
        details["inversion_skipped"] = "disabled in the audit config" if not cfg.inversion.enabled else \
            "the model is not a single differentiable noise-to-image generator (the white-box attack needs G(z))"
    mia = {name: attack_summary(p, q, cfg.n_boot, cfg.seed + 4) for name, (p, q) in attacks.items()}
    details["membership_inference"] = mia
    best_auc = max(mia, key=lambda a: mia[a]["auc"])
    best_tpr = max(mia, key=lambda a: mia[a]["tpr_at_1fpr"])
    results["mia_auc"] = mia[best_auc]["auc"]
    results["mia_tpr_at_1fpr"] = mia[best_tpr]["tpr_at_1fpr"]
    for name, s in mia.items():
        results[f"mia_auc_{name}"] = s["auc"]
        results[f"mia_tpr_at_1fpr_{name}"] = s["tpr_at_1fpr"]
    ci["mia_auc"] = mia[best_auc]["auc_ci95"]
    ci["mia_tpr_at_1fpr"] = mia[best_tpr]["tpr_at_1fpr_ci95"]

    # canaries
    found = 0
    if canaries is not None:
        canaries = _as_images(canaries, "canaries")
        d_can = knn_distances(canaries, fake, k)
        d_ref = d_non[:, 0]
        near_thr = float(torch.quantile(d_ref.double(), cfg.quantile))
        can_scores = {"distance": -d_can[:, 0], "density": -d_can.mean(1)}
        if "inversion" in attacks and G is not None:
            can_scores["inversion"] = -inversion_losses(G, canaries, cfg.inversion, cfg.seed + 5)
        per = []
        for i in range(canaries.shape[0]):
            exposure = {a: float((attacks[a][1] >= can_scores[a][i]).double().mean()) for a in can_scores}
            near = float(d_can[i, 0]) < near_thr
            hit = near or min(exposure.values()) <= cfg.quantile
            found += int(hit)
            per.append({"index": i, "nearest_sample_rmse": float(d_can[i, 0]), "near_copy": near, "exposure": exposure, "found": hit})
        details["canaries"] = per
        results["canaries_found"] = float(found)

    checks = [
        _check("near_copy_fraction", results["near_copy_fraction"], th.max_near_copy_fraction, "<="),
        _check("dcr_ratio", results["dcr_ratio"], th.min_dcr_ratio, ">=", ci.get("dcr_ratio")),
        _check("dcr_closer", results["dcr_closer"], th.max_dcr_closer, "<=", ci.get("dcr_closer")),
        _check("mia_auc", results["mia_auc"], th.max_mia_auc, "<=", ci.get("mia_auc")),
        _check("mia_tpr_at_1fpr", results["mia_tpr_at_1fpr"], th.max_mia_tpr_at_1fpr, "<=", ci.get("mia_tpr_at_1fpr")),
    ]
    if canaries is not None:
        checks.append(_check("canaries_found", float(found), th.max_canaries_found, "<="))
    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "results": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()},
        "ci95": ci,
        "thresholds": th.model_dump(),
        "n": {"synthetic": int(fake.shape[0]), "train": int(train.shape[0]), "holdout": int(holdout.shape[0]),
              "candidates_per_side": int(n_c), "canaries": int(canaries.shape[0]) if canaries is not None else 0},
        "config": cfg.model_dump(mode="json"),
        "details": details,
    }


def failed_checks_message(report: dict[str, Any]) -> str:
    bad = [c for c in report["checks"] if not c["passed"]]
    lines = [f"privacy audit failed {len(bad)} of {len(report['checks'])} checks:"]
    for c in bad:
        lines.append(f"  {c['name']} = {c['value']} (must be {c['rule']} {c['threshold']})")
    return "\n".join(lines)


# -- data for the audit --------------------------------------------------------------------------
def load_image_set(source: Any, split: str | None = None, limit: int | None = None, seed: int = 0) -> torch.Tensor:
    """(N, 1, H, W) images in [0, 1] from a tensor, a dataset, a prepared set (``split`` rows) or a folder."""
    if isinstance(source, torch.Tensor):
        x = source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if (path / "manifest.csv").is_file():
            from breastgan.data.prepared import PreparedDataset

            x = PreparedDataset(path, split=split, label_column=None).images
        elif path.is_dir():
            from breastgan.evaluation.sources import from_folder

            x = from_folder(path).load()
        else:
            raise FileNotFoundError(f"{path}: not a prepared dataset (manifest.csv) or a folder of images")
    elif hasattr(source, "images") and isinstance(source.images, torch.Tensor):
        x = source.images
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        x = torch.stack([source[i][0] for i in range(len(source))])
    else:
        raise TypeError(f"cannot read images from a {type(source).__name__}")
    return _subset(x.float(), limit, seed) if limit else x.float()


def run_training_images(run: str | Path) -> Any:
    """The run's training dataset, rebuilt from its saved config (so the audit uses exactly what G saw)."""
    from breastgan.config import load_config
    from breastgan.data.base import build_dataset

    cfg = load_config(Path(run) / "config.yaml")
    return build_dataset(cfg.data.source.component, cfg.data.source.args)


def audit_run(run: str | Path, holdout: Any, *, train: Any = None, config: AuditConfig | dict[str, Any] | None = None,
              canaries: Any = None, checkpoint: str | int = "latest", train_split: str | None = "train",
              holdout_split: str | None = "test", device: str = "cpu") -> dict[str, Any]:
    """``breastgan audit``: load the run's model (EMA weights) and audit it against its training data."""
    from breastgan.generation.loader import load_generator

    gen = load_generator(run, checkpoint=checkpoint, device=device)
    train_images = load_image_set(train if train is not None else run_training_images(run), train_split)
    holdout_images = load_image_set(holdout, holdout_split)
    can = load_image_set(canaries, None) if canaries is not None else None
    return run_audit(audit_subject(gen, holdout_images), train_images, holdout_images, config, can)
