"""Privacy audit of a generator: the attacks a recipient of the package could run, as an export gate.

Inputs: the model (any loaded kind, through ``synthesize(n, seed) -> (N, 1, H, W)`` in [0, 1], or
anything with ``sample(n, seed=...)``; a single noise generator or an inversion's generator also
enables the white-box attack; a translator is audited on its translations of the held-out images,
see :func:`audit_subject`), the training images, and held-out real images of the same distribution
that were NOT trained on.

Measured (every statistic with n, an interval and a calibrated p-value):

- near-copies: nearest training image of every synthetic image in pixel, SSIM and a feature
  space, all with flips; flagged when closer than the ``quantile`` of the held-out images' own
  nearest-training distances. Blank images (:class:`~breastgan.evaluation.memorisation.BlankRule`:
  background crops, padding, a collapsed generator's flat grey) are never near-copies and blank
  held-out images do not set the threshold: "smooth" is not "copied";
- DCR: distance to closest record (pixel RMSE over flips). For each synthetic image with content,
  the DCR to the training set vs the DCR to an equally large held-out set: ``dcr_ratio`` (median of
  their ratio) and ``dcr_closer`` (share nearer to training) are 1 and 0.5 without memorisation;
- membership inference on candidates (training members vs held-out non-members): black-box
  ``distance`` and ``density`` (Hilprecht et al. 2019) and white-box ``inversion`` (Hayes et al.
  2019 / Chen et al. 2020 GAN-Leaks); AUC and TPR at 1% FPR;
- canaries: planted training images; one is found when it is nearer to the samples than the
  ``quantile`` of non-members are, or when an attack ranks it above all but that share of them.

Calibration (issue 13). Every distance is computed once between the synthetic images and the pooled
training + held-out images. If the generator never saw either set, the two are exchangeable, so
re-assigning membership at random (``n_permutations`` times; the attack candidates' labels too)
gives each statistic's own null distribution, whatever the generator does (a flat grey generator's
``dcr_closer`` is 0 or 1 depending on which set holds the smoothest image, and the permutation sees
exactly that). A check fails only when its value is beyond the material threshold in
:class:`AuditThresholds` AND its permutation p-value is at most ``alpha`` / (number of gated checks)
(Bonferroni: family-wise false-alarm rate at most ``alpha``). Intervals resample the synthetic,
training and held-out images and the candidates, not the synthetic images alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import finish_interval, percentile_ci
from breastgan.evaluation.memorisation import FLIPS, BlankRule, pixel_candidates
from breastgan.evaluation.ssim import ssim
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
    n_boot: int = Field(200, ge=0, description="bootstrap replicates over synthetic, training and held-out images")
    n_permutations: int = Field(200, ge=0, description="membership permutations of the exchangeability test (0: thresholds alone decide)")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise false-alarm level of the gated checks (Bonferroni over them)")
    blank: BlankRule = Field(default_factory=BlankRule, description="images with too little content to be called copies")
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


# -- the audit ---------------------------------------------------------------------------------
def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n].sort().values]


def _subset_index(n_total: int, n: int, seed: int) -> torch.Tensor:
    if n_total <= n:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def _as_images(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{what}: expected an (N, C, H, W) tensor of images in [0, 1]")
    x = x.detach().float().cpu()
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"{what}: pixel values must lie in [0, 1]")
    return x.clamp(0, 1)


def flip_distance_matrix(query: torch.Tensor, ref: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(n_q, n_r) pixel RMSE, minimum over the four flips of each query image."""
    r = ref.flatten(1).float()
    r2 = (r * r).sum(1)
    out = []
    for q in query.split(chunk):
        best = None
        for dims in FLIPS.values():
            f = (q.flip(dims) if dims else q).flatten(1).float()
            d2 = ((f * f).sum(1, keepdim=True) - 2 * f @ r.T + r2).clamp(min=0) / r.shape[1]
            best = d2 if best is None else torch.minimum(best, d2)
        out.append(best.sqrt())
    return torch.cat(out)


def feature_distance_matrix(query_flips: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(n_q, n_r) Euclidean feature distance, minimum over the flips (query_flips: (flips, n_q, D))."""
    return torch.stack([torch.cdist(q.double(), ref.double()).float() for q in query_flips]).min(0).values


def ssim_distance_matrix(query: torch.Tensor, ref: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """1 - SSIM for each query's ``k`` pixel-nearest (reference image, flip) pairs; +inf elsewhere (the stated shortlist)."""
    _, idx, flips = pixel_candidates(query, ref, k, exclude_self=exclude_self)
    flip_dims = list(FLIPS.values())
    n, kk = idx.shape
    q = torch.stack([query[i].flip(flip_dims[int(f)]) if flip_dims[int(f)] else query[i] for i in range(n) for f in flips[i]])
    r = ref[idx.flatten()]
    d = 1 - torch.cat([ssim(a, b) for a, b in zip(q.split(512), r.split(512))]).view(n, kk)
    out = torch.full((n, ref.shape[0]), float("inf"))
    return out.scatter_reduce_(1, idx, d.float(), reduce="amin")


def _check(name: str, value: float | None, threshold: float, rule: str, ci: Any = None, p_value: float | None = None,
           alpha: float | None = None, not_applicable: str | None = None) -> dict[str, Any]:
    """A gate check: it fails when the value is beyond its threshold AND (calibrated audits) the exchangeability test rejects."""
    if not_applicable is not None:
        beyond, significant = False, False
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        beyond, significant = True, True
    else:
        beyond = value > threshold if rule == "<=" else value < threshold
        significant = True if p_value is None or alpha is None else p_value <= alpha
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON and the package manifest hold finite numbers only; not_applicable / beyond_threshold say why
    out = {"name": name, "value": value, "threshold": float(threshold), "rule": rule, "passed": not (beyond and significant),
           "ci95": list(ci) if ci is not None else None, "beyond_threshold": bool(beyond)}
    if p_value is not None:
        out.update({"p_value": float(p_value), "alpha": alpha, "significant": bool(significant)})
    if not_applicable is not None:
        out["not_applicable"] = not_applicable
    return out


class _AuditStatistics:
    """Every audit statistic as a function of (training indices, held-out indices, synthetic indices, candidate labels).

    All distances are computed once between the synthetic images and the pooled training + held-out
    images, and among the pooled images; the observed audit, the exchangeability (permutation) test
    and the interval replicates then differ only in which pooled images play "training" and which
    "held-out", and which synthetic images are drawn.
    """

    def __init__(self, d_fp: dict[str, torch.Tensor], d_pp: dict[str, torch.Tensor], fake_blank: torch.Tensor, pool_blank: torch.Tensor,
                 quantile: float, cand_scores: dict[str, torch.Tensor], seed: int):
        self.d_fp, self.d_pp = d_fp, d_pp
        self.fake_blank, self.pool_blank = fake_blank, pool_blank
        self.quantile = quantile
        self.cand_scores = cand_scores  # attack -> (n_candidates,) score, higher = more member-like
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, t: torch.Tensor, h: torch.Tensor, f: torch.Tensor, members: torch.Tensor, nonmembers: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        content = ~self.fake_blank[f]
        flagged = torch.zeros(len(f), dtype=torch.bool)
        h_keep = ~self.pool_blank[h]
        if not bool(h_keep.any()):
            h_keep = torch.ones_like(h_keep)
        for space in self.d_fp:
            # nearest training image first (one gather of the columns), then the rows drawn: half the memory traffic
            a = self.d_fp[space].index_select(1, t).amin(1)[f]
            b = self.d_pp[space].index_select(1, t).amin(1)[h]
            finite_b = b[h_keep][torch.isfinite(b[h_keep])]
            thr = float(torch.quantile(finite_b.double(), self.quantile)) if finite_b.numel() else 0.0
            flagged |= a < thr
            bm = float(b[torch.isfinite(b)].median()) if bool(torch.isfinite(b).any()) else float("nan")
            am = float(a[torch.isfinite(a)].median()) if bool(torch.isfinite(a).any()) else float("nan")
            out[f"nn_ratio_{space}"] = am / bm if bm > 0 else float("inf")
            out[f"_thr_{space}"] = thr
        flagged &= content
        out["near_copy_fraction"] = float(flagged.double().mean())
        out["_n_flagged"] = float(flagged.sum())
        # DCR against equally large training and held-out sets, on synthetic images with content
        m = min(len(t), len(h))
        tt = t[torch.randperm(len(t), generator=self.g)[:m]] if len(t) > m else t
        hh = h[torch.randperm(len(h), generator=self.g)[:m]] if len(h) > m else h
        fc = f[content]
        if fc.numel():
            px = self.d_fp["pixel"]
            d_tr, d_ho = px.index_select(1, tt).amin(1)[fc], px.index_select(1, hh).amin(1)[fc]
            out["dcr_closer"] = float((d_tr < d_ho).double().mean())
            out["dcr_ratio"] = float((d_tr / d_ho.clamp(min=1e-12)).median())
        else:
            out["dcr_closer"], out["dcr_ratio"] = float("nan"), float("nan")
        for attack, sc in self.cand_scores.items():
            out[f"mia_auc_{attack}"] = roc_auc(sc[members], sc[nonmembers])
            out[f"mia_tpr_at_1fpr_{attack}"] = tpr_at_fpr(sc[members], sc[nonmembers])
        out["mia_auc"] = max(out[f"mia_auc_{a}"] for a in self.cand_scores)
        out["mia_tpr_at_1fpr"] = max(out[f"mia_tpr_at_1fpr_{a}"] for a in self.cand_scores)
        return out


# direction in which each gated statistic indicates memorisation
_GATED = {"near_copy_fraction": "greater", "dcr_ratio": "less", "dcr_closer": "greater", "mia_auc": "greater", "mia_tpr_at_1fpr": "greater"}


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

    n_t, n_h, n_f = train.shape[0], holdout.shape[0], fake.shape[0]
    pool = torch.cat([train, holdout])
    t_obs, h_obs, f_all = torch.arange(n_t), torch.arange(n_t, n_t + n_h), torch.arange(n_f)
    blank = BlankRule.model_validate(cfg.blank)
    fake_blank, pool_blank = blank.mask(fake), blank.mask(pool)

    # distances, once: synthetic -> pool and pool -> pool (self excluded), in three spaces, all with flips
    d_fp = {"pixel": flip_distance_matrix(fake, pool)}
    d_pp = {"pixel": flip_distance_matrix(pool, pool)}
    d_pp["pixel"].fill_diagonal_(float("inf"))
    d_fp["ssim"] = ssim_distance_matrix(fake, pool, cfg.ssim_candidates)
    d_pp["ssim"] = ssim_distance_matrix(pool, pool, cfg.ssim_candidates, exclude_self=True)
    d_pp["ssim"].fill_diagonal_(float("inf"))
    fname, ffn = feature_function(cfg.extractor)
    feat_pool = ffn(pool)
    d_fp["feature"] = feature_distance_matrix(torch.stack([ffn(fake.flip(d) if d else fake) for d in FLIPS.values()]), feat_pool)
    d_pp["feature"] = feature_distance_matrix(torch.stack([ffn(pool.flip(d) if d else pool) for d in FLIPS.values()]), feat_pool)
    d_pp["feature"].fill_diagonal_(float("inf"))

    # membership-inference candidates: members from training, non-members from held-out; scores do not depend on labels
    n_c = min(cfg.n_candidates, n_t, n_h)
    mem_idx = _subset_index(n_t, n_c, cfg.seed + 1)
    non_idx = n_t + _subset_index(n_h, n_c, cfg.seed + 2)
    cand = torch.cat([mem_idx, non_idx])
    k = min(cfg.knn, n_f)
    d_cand = d_fp["pixel"][:, cand].T.topk(k, dim=1, largest=False).values  # (2 n_c, k) candidate -> nearest samples
    scores: dict[str, torch.Tensor] = {"distance": -d_cand[:, 0], "density": -d_cand.mean(1)}
    details: dict[str, Any] = {}
    G = generator_module(generator)
    if cfg.inversion.enabled and G is not None:
        scores["inversion"] = -inversion_losses(G, pool[cand], cfg.inversion, cfg.seed + 3)
    else:
        details["inversion_skipped"] = "disabled in the audit config" if not cfg.inversion.enabled else \
            "the model is not a single differentiable noise-to-image generator (the white-box attack needs G(z))"
    c_mem, c_non = torch.arange(n_c), torch.arange(n_c, 2 * n_c)

    stats = _AuditStatistics(d_fp, d_pp, fake_blank, pool_blank, cfg.quantile, scores, cfg.seed + 6)
    observed = stats(t_obs, h_obs, f_all, c_mem, c_non)

    # exchangeability test: if the generator never saw either set, training and held-out images are exchangeable,
    # so the statistic's distribution under random re-assignment of membership is its null distribution
    g = torch.Generator().manual_seed(cfg.seed + 8)
    null: dict[str, list[float]] = {name: [] for name in _GATED}
    for _ in range(cfg.n_permutations):
        perm = torch.randperm(n_t + n_h, generator=g)
        cperm = torch.randperm(2 * n_c, generator=g)
        r = stats(perm[:n_t], perm[n_t:], f_all, cperm[:n_c], cperm[n_c:])
        for name in _GATED:
            null[name].append(r[name])
    p_values: dict[str, float | None] = {}
    for name, direction in _GATED.items():
        v = np.asarray(null[name], dtype=np.float64)
        obs = observed[name]
        if not cfg.n_permutations or not math.isfinite(obs):
            p_values[name] = None
            continue
        v = v[np.isfinite(v)]
        extreme = (v >= obs - 1e-12) if direction == "greater" else (v <= obs + 1e-12)
        p_values[name] = float((1 + extreme.sum()) / (1 + v.size))

    # intervals: resample the synthetic images AND the training and held-out images (all three sets are samples)
    rng = np.random.default_rng(cfg.seed)
    boot: dict[str, list[float]] = {name: [] for name in _GATED}
    for _ in range(cfg.n_boot):
        tb = torch.from_numpy(rng.integers(0, n_t, n_t))
        hb = torch.from_numpy(n_t + rng.integers(0, n_h, n_h))
        fb = torch.from_numpy(rng.integers(0, n_f, n_f))
        mb = torch.from_numpy(rng.integers(0, n_c, n_c))
        nb = torch.from_numpy(n_c + rng.integers(0, n_c, n_c))
        r = stats(tb, hb, fb, mb, nb)
        for name in _GATED:
            boot[name].append(r[name])
    ci: dict[str, Any] = {}
    for name in _GATED:
        lo, hi = percentile_ci(boot[name]) if cfg.n_boot else (float("nan"), float("nan"))
        bounds = (0.0, 1.0) if name != "dcr_ratio" else (0.0, None)
        iv = finish_interval(observed[name], lo, hi, "bootstrap-percentile", cfg.n_boot, bounds=bounds) if cfg.n_boot else None
        ci[name] = iv.bounds if iv is not None else None

    results: dict[str, Any] = {k: v for k, v in observed.items() if not k.startswith("_")}
    results["dcr_holdout_baseline_ratio"] = results["nn_ratio_pixel"]
    details["near_copy_thresholds"] = {s: observed[f"_thr_{s}"] for s in d_fp}
    details["feature_space"] = fname
    details["blank"] = {**blank.describe(), "synthetic_blank": int(fake_blank.sum()), "reference_blank": int(pool_blank[h_obs].sum()),
                        "training_blank": int(pool_blank[t_obs].sum()),
                        "use": "blank synthetic images are never near-copies and are left out of DCR; blank held-out images do not set "
                               "the near-copy threshold"}
    px = d_fp["pixel"][:, t_obs]
    nearest_d, nearest_i = px.min(1)
    flagged_any = torch.zeros(n_f, dtype=torch.bool)
    for space in d_fp:
        flagged_any |= d_fp[space][:, t_obs].min(1).values < observed[f"_thr_{space}"]
    flagged_any &= ~fake_blank
    details["nearest_pairs"] = [{"synthetic_index": int(j), "train_index": int(nearest_i[j]), "pixel_rmse": float(nearest_d[j]),
                                 "ssim": 1 - float(d_fp["ssim"][j, t_obs].min()), "blank": bool(fake_blank[j]), "flagged": bool(flagged_any[j])}
                                for j in torch.argsort(nearest_d)[:12].tolist()]
    details["dcr"] = {"compared_sets": min(n_t, n_h), "distance": "pixel RMSE over flips of the synthetic image",
                      "synthetic_images_used": int((~fake_blank).sum()),
                      "baseline": "dcr_holdout_baseline_ratio = median DCR(synthetic->train) / median DCR(held-out->train)"}
    details["membership_inference"] = {
        a: {"auc": observed[f"mia_auc_{a}"], "tpr_at_1fpr": observed[f"mia_tpr_at_1fpr_{a}"], "n_members": n_c, "n_nonmembers": n_c}
        for a in scores}
    n_gated = len(_GATED)
    per_check_alpha = cfg.alpha / n_gated
    details["calibration"] = {
        "method": "permutation of membership over the pooled training + held-out images (and of the member/non-member labels of the "
                  "attack candidates); the synthetic images and every distance are fixed, so the null distribution is the statistic's "
                  "own when the generator never saw either set",
        "n_permutations": cfg.n_permutations, "alpha_family": cfg.alpha, "alpha_per_check": per_check_alpha,
        "rule": "a check fails only when its value is beyond its threshold AND its permutation p-value <= alpha / number of checks "
                "(Bonferroni); with n_permutations 0 the thresholds alone decide",
        "p_values": p_values,
        "intervals": "percentile bootstrap over synthetic, training and held-out images (and attack candidates), widened to contain the value"}

    # canaries: planted training images; found when nearer to the samples than the quantile of non-members, or ranked above them
    found = 0
    if canaries is not None:
        canaries = _as_images(canaries, "canaries")
        d_can = knn_distances(canaries, fake, k)
        # blank non-members (background crops) sit at distance ~0 from blank samples: they would hide an exact copy of a
        # canary, so, as for near-copies, only non-members with content set the reference
        non_content = ~pool_blank[cand[n_c:]]
        if not bool(non_content.any()):
            non_content = torch.ones_like(non_content)
        d_ref = d_cand[n_c:, 0][non_content]
        near_thr = float(torch.quantile(d_ref.double(), cfg.quantile))
        can_scores = {"distance": -d_can[:, 0], "density": -d_can.mean(1)}
        if "inversion" in scores and G is not None:
            can_scores["inversion"] = -inversion_losses(G, canaries, cfg.inversion, cfg.seed + 5)
        per = []
        for i in range(canaries.shape[0]):
            exposure = {a: float((scores[a][n_c:][non_content] >= can_scores[a][i]).double().mean()) for a in can_scores}
            near = float(d_can[i, 0]) < near_thr
            hit = near or min(exposure.values()) <= cfg.quantile
            found += int(hit)
            per.append({"index": i, "nearest_sample_rmse": float(d_can[i, 0]), "near_copy": near, "exposure": exposure, "found": hit})
        details["canaries"] = per
        results["canaries_found"] = float(found)

    def gated(name: str, threshold: float, rule: str) -> dict[str, Any]:
        na = None
        if name.startswith("dcr") and not bool((~fake_blank).any()):
            na = "every synthetic image is blank: there is no content whose distance could reveal copying"
        return _check(name, results[name], threshold, rule, ci.get(name), p_values.get(name) if cfg.n_permutations else None,
                      per_check_alpha if cfg.n_permutations else None, na)

    checks = [
        gated("near_copy_fraction", th.max_near_copy_fraction, "<="),
        gated("dcr_ratio", th.min_dcr_ratio, ">="),
        gated("dcr_closer", th.max_dcr_closer, "<="),
        gated("mia_auc", th.max_mia_auc, "<="),
        gated("mia_tpr_at_1fpr", th.max_mia_tpr_at_1fpr, "<="),
    ]
    if canaries is not None:
        checks.append(_check("canaries_found", float(found), th.max_canaries_found, "<="))
    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "results": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()},
        "ci95": ci,
        "p_values": p_values,
        "thresholds": th.model_dump(),
        "n": {"synthetic": int(n_f), "train": int(n_t), "holdout": int(n_h),
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
