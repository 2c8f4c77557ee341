"""Sliced Wasserstein distances: ProGAN's multi-scale SWD on pixels, and SWD in PCA/UMAP embeddings.

Multi-scale SWD (Karras et al. 2018, adapted to one channel): a Laplacian pyramid of each image from
full resolution down to 16 px (5x5 binomial filter, mirror borders), 128 random 7x7 neighbourhoods
per image per level (49-d descriptors), each level's descriptors normalised by their own set's mean
and standard deviation, then the SWD between the real and synthetic descriptor sets with 4 repeats of
128 random unit directions; reported x 1e3 per level and averaged. Deviation from ProGAN: the random
neighbourhood positions are drawn once and used in both sets (common random numbers), so identical
sets give exactly 0 and the sampling-noise floor between similar sets is lower. As in ProGAN the images are on the
0-255 scale (the normalisation makes this immaterial except for the Laplacian's float precision).
Both sets must use the same number of images (the smaller count is used).

Embedding SWD (DGAN-WP-TL, Eq. 6): features of both sets are projected to 2-D with PCA and UMAP fitted
on the union; SWD is the mean over K random unit directions of the 1-D Wasserstein-1 distance of the
projections. The embeddings are kept for the report's scatter plots.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import apply_interval, half_sampling_ci, small_n_warning
from breastgan.evaluation.context import PIXEL_POLICY, EvaluationContext, MetricResult, register_metric

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSS_5x5 = (torch.outer(_BINOMIAL, _BINOMIAL) / 256.0).view(1, 1, 5, 5)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), GAUSS_5x5.to(x))[..., ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = torch.zeros(n, c, h * 2, w * 2, dtype=x.dtype)
    up[..., ::2, ::2] = x  # zero insertion, then the filter x 4 restores the mean
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), GAUSS_5x5.to(x) * 4.0)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest (full-resolution band-pass) first; the last level is the low-pass residual."""
    pyramid = [x.float()]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def pyramid_levels(size: int, min_size: int = 16) -> int:
    levels, res = 0, size
    while res >= min_size:
        levels += 1
        res //= 2
    return levels


def random_positions(n: int, h: int, w: int, per_image: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    half = size // 2
    return torch.randint(half, h - half, (n, per_image), generator=g), torch.randint(half, w - half, (n, per_image), generator=g)


def random_descriptors(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int) -> torch.Tensor:
    """(N * per_image, C * size * size) neighbourhoods of (N, C, H, W) level images centred at (ys, xs)."""
    n, c, h, w = level.shape
    per_image = ys.shape[1]
    half = size // 2
    offs = torch.arange(-half, half + 1)
    rows = (ys[..., None] + offs).view(n, per_image, size, 1)
    cols = (xs[..., None] + offs).view(n, per_image, 1, size)
    img = torch.arange(n).view(n, 1, 1, 1)
    patches = level.permute(0, 2, 3, 1)[img, rows, cols]  # (n, per_image, size, size, c)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * per_image, c * size * size)


def normalise_descriptors(desc: torch.Tensor, channels: int = 1) -> torch.Tensor:
    # per channel over all descriptors and positions, as ProGAN's finalize_descriptors
    d = desc.view(desc.shape[0], channels, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True, unbiased=False)
    return ((d - mean) / std).view(desc.shape[0], -1)


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    """Sort each row of a (K, N) float32 array; numpy's SIMD sort is ~2x torch's here and releases the GIL,
    so row chunks sort in parallel threads."""
    threads = max(1, min(torch.get_num_threads(), x.shape[0]))
    if threads == 1:
        x.sort(axis=1)
        return x
    chunks = np.array_split(np.arange(x.shape[0]), threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda rows: x[rows[0] : rows[-1] + 1].sort(axis=1), chunks))
    return x


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs_per_repeat: int = 128, repeats: int = 4, seed: int = 0) -> float:
    """SWD between equal-size point sets: mean over random unit directions of mean |sorted(a.d) - sorted(b.d)|."""
    if a.shape != b.shape:
        raise ValueError(f"multi-scale SWD compares equal-size descriptor sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    results = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=g)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa = _sorted_rows(np.ascontiguousarray((dirs.T @ a.float().T).numpy()))
        pb = _sorted_rows(np.ascontiguousarray((dirs.T @ b.float().T).numpy()))
        results.append(float(np.abs(pa - pb).mean(dtype=np.float64)))
    return float(np.mean(results))


def swd_descriptors(real: torch.Tensor, fake: torch.Tensor, *, per_image: int = 128, size: int = 7, min_res: int = 16,
                    seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pyramid level (finest first), raw descriptors of both sets shaped (n_images, per_image, size * size)."""
    n = min(real.shape[0], fake.shape[0])
    levels = pyramid_levels(min(real.shape[-2:]), min_res)
    if levels == 0:
        raise ValueError(f"multi-scale SWD needs images of at least {min_res} px, got {tuple(real.shape[-2:])}")
    g = torch.Generator().manual_seed(seed)
    desc_r: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    desc_f: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    for start in range(0, n, 256):  # pyramids in chunks: memory is the descriptors, not the pyramids
        pyr_r = laplacian_pyramid(real[start : min(n, start + 256)].float() * 255.0, levels)
        pyr_f = laplacian_pyramid(fake[start : min(n, start + 256)].float() * 255.0, levels)
        for k in range(levels):
            # common random positions in both sets: identical sets give exactly 0 and the noise floor drops
            ys, xs = random_positions(pyr_r[k].shape[0], *pyr_r[k].shape[-2:], per_image, size, g)
            desc_r[k].append(random_descriptors(pyr_r[k], ys, xs, size).view(-1, per_image, size * size))
            desc_f[k].append(random_descriptors(pyr_f[k], ys, xs, size).view(-1, per_image, size * size))
    return [(torch.cat(r), torch.cat(f)) for r, f in zip(desc_r, desc_f)]


def swd_from_descriptors(levels: list[tuple[torch.Tensor, torch.Tensor]], *, dirs_per_repeat: int = 128, repeats: int = 4, seed: int = 0,
                         idx_real: torch.Tensor | None = None, idx_fake: torch.Tensor | None = None) -> list[float]:
    """Per-level SWD x 1e3; ``idx_*`` select (resample) images, for the bootstrap."""
    out = []
    for k, (r, f) in enumerate(levels):
        if idx_real is not None:
            r = r[idx_real]
        if idx_fake is not None:
            f = f[idx_fake]
        a = normalise_descriptors(r.reshape(-1, r.shape[-1]))
        b = normalise_descriptors(f.reshape(-1, f.shape[-1]))
        out.append(sliced_wasserstein(a, b, dirs_per_repeat, repeats, seed + k) * 1e3)
    return out


def multiscale_swd(real: torch.Tensor, fake: torch.Tensor, *, per_image: int = 128, size: int = 7, dirs_per_repeat: int = 128,
                   repeats: int = 4, min_res: int = 16, seed: int = 0) -> dict[str, Any]:
    """ProGAN SWD of (N, 1, H, W) [0, 1] images; returns per-level values x 1e3 (finest first) and their mean."""
    levels = swd_descriptors(real, fake, per_image=per_image, size=size, min_res=min_res, seed=seed)
    per_level = swd_from_descriptors(levels, dirs_per_repeat=dirs_per_repeat, repeats=repeats, seed=seed)
    resolutions = [min(real.shape[-2:]) // 2**k for k in range(len(levels))]
    return {"per_level": dict(zip([str(r) for r in resolutions], per_level)), "mean": float(np.mean(per_level)),
            "n_images": levels[0][0].shape[0], "descriptors": levels}


def wasserstein1_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W1 between the columns of a (n, K) and b (m, K), 1-D empirical distributions of any sizes.

    W1 = integral over q of |Q_a(q) - Q_b(q)|; both quantile functions are steps at multiples of 1/n and
    1/m, so the integral is a finite sum over the merged breakpoints (integers on the 1/(n m) grid).
    """
    sa, sb = torch.sort(a.double(), dim=0).values, torch.sort(b.double(), dim=0).values
    n, m = sa.shape[0], sb.shape[0]
    if n == m:
        return (sa - sb).abs().mean(0)
    t = torch.unique(torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]))  # sorted, in units of 1/(n m)
    widths = torch.diff(t, prepend=torch.zeros(1, dtype=t.dtype)).double() / (n * m)
    ia = (t + m - 1) // m - 1  # step of Q_a covering (t_prev, t]
    ib = (t + n - 1) // n - 1
    return (widths[:, None] * (sa[ia] - sb[ib]).abs()).sum(0)


def embedding_swd(a: torch.Tensor, b: torch.Tensor, n_directions: int = 128, seed: int = 0) -> float:
    """DGAN-WP-TL's SWD: mean over random unit directions of W1 between the projected point sets."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_directions, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return float(wasserstein1_1d(a.double() @ dirs, b.double() @ dirs).mean())


def embed(real: np.ndarray, fake: np.ndarray, method: str, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit ``method`` (pca/umap) on the union of both feature sets; return both embeddings and the fit's settings."""
    both = np.concatenate([real, fake]).astype(np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, random_state=seed).fit(both)
        z = pca.transform(both)
        info = {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    elif method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap warns that a fixed random_state disables parallelism: intended
            reducer = umap.UMAP(n_components=n_components, random_state=seed, n_neighbors=min(15, len(both) - 1))
            z = reducer.fit_transform(both)
        info = {"n_neighbors": reducer.n_neighbors, "min_dist": reducer.min_dist}
    else:
        raise ValueError(f"embedding method must be 'pca' or 'umap', got {method!r}")
    return z[: len(real)], z[len(real) :], {"method": method, "n_components": n_components, "fitted_on": "real + synthetic features", **info}


# --- registered metrics ------------------------------------------------------------------------------------------


class SWDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    descriptors_per_image: int = Field(128, ge=1)
    descriptor_size: int = Field(7, ge=3)
    dirs_per_repeat: int = Field(128, ge=1)
    repeats: int = Field(4, ge=1)
    min_resolution: int = Field(16, ge=8)
    max_images: int = Field(16384, ge=2, description="descriptor memory: images x levels x 128 x 49 x 4 B")
    n_boot: int | None = Field(10, ge=0, description="half-sampling replicates over images of both sets (each recomputes the SWD)")


@register_metric("swd", args=SWDOptions, summary="ProGAN multi-scale sliced Wasserstein distance x1e3 (lower is better)",
                 policy={**PIXEL_POLICY, "range": "[0, 255] float (x 255), descriptors normalised per level"})
def swd_metric(ctx: EvaluationContext, descriptors_per_image: int, descriptor_size: int, dirs_per_repeat: int, repeats: int,
               min_resolution: int, max_images: int, n_boot: int | None) -> list[MetricResult]:
    real, fake = ctx.pixels("real")[:max_images], ctx.pixels("fake")[:max_images]
    kw = dict(per_image=descriptors_per_image, size=descriptor_size, dirs_per_repeat=dirs_per_repeat, repeats=repeats, min_res=min_resolution)
    res = multiscale_swd(real, fake, seed=ctx.seed, **kw)
    reps = ctx.n_boot if n_boot is None else n_boot
    iv = None
    if reps:
        # half-samples of images reuse their descriptors (the pyramid and positions are not redone) and the estimate's
        # directions (common random numbers: the interval is about the images, not the direction draw)
        m = res["n_images"]
        iv, _ = half_sampling_ci(lambda i, j: float(np.mean(swd_from_descriptors(res["descriptors"], dirs_per_repeat=dirs_per_repeat, repeats=repeats,
                                                                                 seed=ctx.seed, idx_real=i, idx_fake=j))),
                                 [m, m], res["mean"], reps, ctx.seed, bounds=(0.0, None))
    warn = small_n_warning("swd", res["n_images"])
    details = {"per_level_x1e3": res["per_level"], "descriptors_per_image": descriptors_per_image, "directions": dirs_per_repeat * repeats}
    r = MetricResult("swd", res["mean"], None, {"real": real.shape[0], "fake": fake.shape[0], "used": res["n_images"]}, True, details,
                     warnings=[warn] if warn else [])
    return [apply_interval(r, iv)]


class EmbeddingSWDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    methods: list[str] = Field(default_factory=lambda: ["pca", "umap"])
    n_components: int = Field(2, ge=1)
    n_directions: int = Field(128, ge=1)
    extractor: Any = None
    max_points: int = Field(5000, ge=10, description="per set; UMAP time grows with the point count")
    n_boot: int | None = Field(100, ge=0, description="half-sampling replicates over points of the fixed embedding")


@register_metric("embedding-swd", args=EmbeddingSWDOptions, summary="SWD between real and synthetic features in PCA / UMAP embeddings",
                 policy={"features": "extractor input policy (see details.extractor)"}, min_n={"real": 4, "fake": 4})
def embedding_swd_metric(ctx: EvaluationContext, methods: list[str], n_components: int, n_directions: int, extractor: Any,
                         max_points: int, n_boot: int | None) -> list[MetricResult]:
    fr, ff = ctx.features("real", extractor), ctx.features("fake", extractor)
    if fr.features is None or ff.features is None:
        raise ValueError("embedding SWD needs feature rows")
    a, b = fr.features[:max_points].numpy(), ff.features[:max_points].numpy()
    out = []
    reps = ctx.n_boot if n_boot is None else n_boot
    for method in methods:
        za, zb, info = embed(a, b, method, n_components, ctx.seed)
        ta, tb = torch.from_numpy(za), torch.from_numpy(zb)
        value = embedding_swd(ta, tb, n_directions, ctx.seed)
        iv = None
        if reps:
            iv, _ = half_sampling_ci(lambda i, j: embedding_swd(ta[i], tb[j], n_directions, ctx.seed), [len(ta), len(tb)], value, reps,
                                     ctx.seed, bounds=(0.0, None))
        ctx.artefacts.setdefault("embeddings", {})[method] = {"real": za, "fake": zb, "info": info}
        warn = small_n_warning("embedding-swd", min(len(a), len(b)))
        r = MetricResult(f"swd_{method}", value, None, {"real": len(a), "fake": len(b)}, True,
                         {**info, "directions": n_directions, "extractor": ff.extractor,
                          "ci_note": "embedding fixed (refitting UMAP per replicate is too slow)"},
                         ff.extractor["input_policy"], [warn] if warn else [])
        out.append(apply_interval(r, iv))
    return out
