"""Empirical coverage of breastgan's nominal 95% intervals, on draws whose population value is known.

Feature metrics (FID, fid_inf, KID, PRDC): pairs of sets drawn from two known Gaussians in a d-dimensional
feature space. Population values: FID and fid_inf, the closed-form Fréchet distance of the two
Gaussians; KID, the population MMD^2 of the cubic kernel, from 2 x 10^6 independent pairs per term
(Monte Carlo standard error printed); PRDC, whose value depends on n by definition, the mean of the
statistic over 400 fresh draws at the same n ("population value at this n").
Pixel metrics (SSIM, PSNR real-fake): pairs of phantom sets (BI-RADS-like density levels 2 and 3); the
population value is the mean over 20,000 random real-fake pairs of large fresh sets.

For each metric and n in --ns: --reps independent draws, each evaluated exactly as ``breastgan
evaluate`` does (the metric functions of breastgan.evaluation with their default interval settings),
and the share of draws whose interval contains the population value. Also printed: the share of
intervals that contain their own estimate (must be 100%) and the median interval width.

    python benchmarks/ci_coverage.py --ns 100 200 1000 --reps 200 --dim 8
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from breastgan.evaluation.bootstrap import half_sampling_ci, half_sampling_intervals, pair_mean_interval
from breastgan.evaluation.fid import fid_ci, fid_extrapolation, frechet_distance, frechet_distance_features
from breastgan.evaluation.kid import kernel_inception_distance
from breastgan.evaluation.prdc import pairwise_distances, prdc_from_distances


def gaussians(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mu1 = torch.zeros(dim, dtype=torch.float64)
    mu2 = torch.full((dim,), 0.3, dtype=torch.float64)
    s1 = torch.eye(dim, dtype=torch.float64)
    s2 = torch.diag(torch.linspace(0.8, 1.5, dim, dtype=torch.float64))
    return mu1, s1, mu2, s2


def draw(mu: torch.Tensor, sigma: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return mu + torch.randn(n, mu.shape[0], generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T


def population_kid(mu1, s1, mu2, s2, pairs: int = 2_000_000, seed: int = 99) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    terms, ses = [], []
    for (ma, sa), (mb, sb) in (((mu1, s1), (mu1, s1)), ((mu2, s2), (mu2, s2)), ((mu1, s1), (mu2, s2))):
        vals = []
        for _ in range(pairs // 200_000):
            x, y = draw(ma, sa, 200_000, g), draw(mb, sb, 200_000, g)
            vals.append(((x * y).sum(1) / x.shape[1] + 1.0) ** 3)
        v = torch.cat(vals)
        terms.append(float(v.mean()))
        ses.append(float(v.std()) / len(v) ** 0.5)
    return terms[0] + terms[1] - 2 * terms[2], float(np.sqrt(ses[0] ** 2 + ses[1] ** 2 + 4 * ses[2] ** 2))


def kid_interval(x: torch.Tensor, y: torch.Tensor, n_boot: int, seed: int):
    r = kernel_inception_distance(x, y, subsets=100, subset_size=1000, n_boot=n_boot, boot_seed=seed)
    return r.mean, r.interval


def prdc_intervals(x: torch.Tensor, y: torch.Tensor, k: int, n_boot: int, seed: int):
    d_rr, d_ff, d_fr = pairwise_distances(x, x), pairwise_distances(y, y), pairwise_distances(y, x)
    values = prdc_from_distances(d_rr, d_ff, d_fr, k)
    ivs = half_sampling_intervals(lambda i, j: prdc_from_distances(d_rr[i][:, i], d_ff[j][:, j], d_fr[j][:, i], k), [len(x), len(y)], values,
                                  n_boot, seed, min_half=k + 1, target="this-n")
    return values, ivs


def feature_coverage(ns: list[int], reps: int, dim: int, seed: int, reps_large: int | None = None) -> dict[str, dict[int, dict[str, float]]]:
    mu1, s1, mu2, s2 = gaussians(dim)
    pop_fid = frechet_distance(mu1, s1, mu2, s2)
    pop_kid, kid_se = population_kid(mu1, s1, mu2, s2)
    print(f"population: FID {pop_fid:.5f} (closed form); KID {pop_kid:.5f} (Monte Carlo SE {kid_se:.1e})", flush=True)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for n in ns:
        g = torch.Generator().manual_seed(seed + n)
        # PRDC's population value at this n: the mean over fresh draws
        prdc_pop = {k: [] for k in ("precision", "recall", "density", "coverage")}
        for _ in range(400 if n <= 200 else 100):
            x, y = draw(mu1, s1, n, g), draw(mu2, s2, n, g)
            v = prdc_from_distances(pairwise_distances(x, x), pairwise_distances(y, y), pairwise_distances(y, x), 5)
            for k in prdc_pop:
                prdc_pop[k].append(v[k])
        prdc_truth = {k: float(np.mean(v)) for k, v in prdc_pop.items()}
        rec: dict[str, list[tuple[bool, bool, float]]] = {}

        def add(name: str, estimate: float, iv, truth: float) -> None:
            if iv is None:
                rec.setdefault(name, []).append((False, False, float("nan")))
                return
            rec.setdefault(name, []).append((iv.lo <= truth <= iv.hi, iv.lo <= estimate <= iv.hi, iv.hi - iv.lo))

        t0 = time.perf_counter()
        n_draws = reps_large if (reps_large is not None and n >= 1000) else reps
        for r in range(n_draws):
            x, y = draw(mu1, s1, n, g), draw(mu2, s2, n, g)
            fid = frechet_distance_features(x, y)
            add("fid", fid, fid_ci(x, y, fid, 20, r), pop_fid)
            fit = fid_extrapolation(x, y, seed=r)
            iv, _ = half_sampling_ci(lambda i, j: fid_extrapolation(x[i], y[j], seed=r)["fid_inf"], [n, n], fit["fid_inf"], 20, r + 1, min_half=10,
                                    target="this-n")
            add("fid_inf", fit["fid_inf"], iv, pop_fid)
            kid, kiv = kid_interval(x.float(), y.float(), 200, r)
            add("kid", kid, kiv, pop_kid)
            values, ivs = prdc_intervals(x, y, 5, 50, r)
            for k in values:
                add(k, values[k], ivs[k], prdc_truth[k])
        dt = time.perf_counter() - t0
        for name, rows in rec.items():
            a = np.array(rows, dtype=np.float64)
            out.setdefault(name, {})[n] = {"coverage": float(a[:, 0].mean()), "contains_estimate": float(a[:, 1].mean()),
                                            "median_width": float(np.nanmedian(a[:, 2]))}
        print(f"n={n}: {n_draws} draws in {dt:.1f} s; " + "; ".join(f"{k} {v[n]['coverage']:.3f} (own {v[n]['contains_estimate']:.2f}, "
                                                                     f"width {v[n]['median_width']:.3g})" for k, v in out.items()), flush=True)
    return out


def pixel_coverage(ns: list[int], reps: int, size: int, seed: int, reps_large: int | None = None) -> dict[str, dict[int, dict[str, float]]]:
    from breastgan.data.phantom import PhantomDataset
    from breastgan.evaluation.ssim import psnr, random_pairs, ssim

    def phantom(n: int, s: int, density: int) -> torch.Tensor:
        return PhantomDataset(n=n, size=size, seed=s, density=density).images

    big_r, big_f = phantom(2000, 10_000, 2), phantom(2000, 20_000, 3)
    i, j = random_pairs(len(big_r), len(big_f), 20_000, seed)
    truth = {"ssim_real_fake": float(torch.cat([ssim(big_r[a], big_f[b]) for a, b in zip(i.split(1000), j.split(1000))]).mean()),
             "psnr_real_fake": float(torch.cat([psnr(big_r[a], big_f[b]) for a, b in zip(i.split(1000), j.split(1000))]).mean())}
    print(f"phantom population: {truth}", flush=True)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for n in ns:
        rec: dict[str, list[tuple[bool, bool, float]]] = {}
        n_draws = min(reps, reps_large) if (reps_large is not None and n >= 1000) else reps
        for r in range(n_draws):
            real, fake = phantom(n, seed + 1000 * n + 2 * r, 2), phantom(n, seed + 1000 * n + 2 * r + 1, 3)
            a, b = random_pairs(n, n, 1000, r)
            for name, fn in (("ssim_real_fake", ssim), ("psnr_real_fake", psnr)):
                v = torch.cat([fn(real[x], fake[y]) for x, y in zip(a.split(500), b.split(500))])
                iv = pair_mean_interval(v, a, b, [n, n], seed=r)
                est = float(v.mean())
                rec.setdefault(name, []).append((iv.lo <= truth[name] <= iv.hi, iv.lo <= est <= iv.hi, iv.hi - iv.lo))
        for name, rows in rec.items():
            arr = np.array(rows, dtype=np.float64)
            out.setdefault(name, {})[n] = {"coverage": float(arr[:, 0].mean()), "contains_estimate": float(arr[:, 1].mean()),
                                            "median_width": float(np.median(arr[:, 2]))}
        print(f"phantom n={n}: {n_draws} draws; " + "; ".join(f"{k} {v[n]['coverage']:.3f} (own {v[n]['contains_estimate']:.2f})"
                                                             for k, v in out.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 200, 1000])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--reps-large", type=int, default=None, help="draws at n >= 1000 (default: --reps)")
    ap.add_argument("--pixel-reps", type=int, default=100)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pixel", action="store_true")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = feature_coverage(args.ns, args.reps, args.dim, args.seed, args.reps_large)
    if not args.skip_pixel:
        res.update(pixel_coverage(args.ns, args.pixel_reps, args.size, args.seed, args.reps_large))
    print(f"\nnominal 95% intervals; coverage of the population value over independent draws (dim {args.dim}, {args.reps} draws"
          f" ({args.reps_large or args.reps} at n >= 1000); pixel metrics {args.pixel_reps} draws)")
    print(f"{'metric':16s}" + "".join(f"  n={n:<5d} cover  own  width" for n in args.ns))
    for name, per_n in res.items():
        print(f"{name:16s}" + "".join(f"  {'':7s}{per_n[n]['coverage']:.3f} {per_n[n]['contains_estimate']:.2f} {per_n[n]['median_width']:.3g}"
                                    for n in args.ns))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": res}, fh, indent=1)


if __name__ == "__main__":
    main()
