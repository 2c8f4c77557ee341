"""Evaluation benchmarks: Inception feature throughput (breastgan vs torch-fidelity, same images, same run),
the Fréchet distance for 2048-d features (eigen route vs scipy sqrtm), and optionally a full evaluate().

torch-fidelity cannot download its Inception weights here; its own FeatureExtractorInceptionV3 module is
built with the fid-helper TorchScript weights (the same TF graph; see breastgan.evaluation.compat), so
both pipelines run the same network on the same uint8 images and their features are compared too.
Rounds alternate between the two pipelines so that load from other processes hits both alike.

    python benchmarks/bench_features.py --images 96 --rounds 3
    python benchmarks/bench_features.py --full 2000      # + evaluate() of 2,000 vs 2,000 patches
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from breastgan.evaluation.compat import torch_fidelity_inception_from_fid_helper
from breastgan.evaluation.extractors import build_extractor
from breastgan.evaluation.fid import feature_stats, frechet_distance


def patches(n: int, size: int, seed: int, smooth: int = 8) -> torch.Tensor:
    """Smooth random textures with noise: 128 px patch stand-ins in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 1, size // smooth, size // smooth, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def bench_features(n: int, size: int, batch: int, rounds: int) -> dict:
    images = patches(n, size, 0)
    u8 = (images * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()  # what torch-fidelity is fed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = torch_fidelity_inception_from_fid_helper()
    ours = build_extractor({"name": "inception-fid", "batch_size": batch})

    # Interleave batch by batch (alternating which goes first) so load from other processes hits both alike;
    # throughput = images / median time per batch.
    run_tf_small, run_ours_small = tf(u8[:2]), ours(images[:2])  # warm-up: oneDNN primitive creation
    del run_tf_small, run_ours_small
    t_tf, t_ours, f_tf, f_ours = [], [], [], []
    for r in range(rounds):
        for k, i in enumerate(range(0, n, batch)):
            for name in (("tf", "ours") if (r + k) % 2 == 0 else ("ours", "tf")):
                t0 = time.perf_counter()
                if name == "tf":
                    with torch.no_grad():  # torch-fidelity's extraction loop: no_grad, uint8 batches, resize inside the net
                        feats = tf(u8[i : i + batch])[0]
                    t_tf.append(time.perf_counter() - t0)
                    if r == 0:
                        f_tf.append(feats)
                else:
                    feats = ours(images[i : i + batch])
                    t_ours.append(time.perf_counter() - t0)
                    if r == 0:
                        f_ours.append(feats)
    tput_tf = batch / statistics.median(t_tf)
    tput_ours = batch / statistics.median(t_ours)
    return {
        "images": n, "size": size, "batch": batch, "rounds": rounds, "threads": torch.get_num_threads(),
        "torch_fidelity_img_per_s": round(tput_tf, 2), "breastgan_img_per_s": round(tput_ours, 2),
        "speedup": round(tput_ours / tput_tf, 2),
        "per_batch_s": {"torch_fidelity": [round(t, 2) for t in t_tf], "breastgan": [round(t, 2) for t in t_ours]},
        "max_abs_feature_diff": float((torch.cat(f_tf) - torch.cat(f_ours)).abs().max()),
    }


def bench_frechet(d: int = 2048, n: int = 4000) -> dict:
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    f1 = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    f2 = (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * 1.1 + 0.05
    (m1, s1), (m2, s2) = feature_stats(f1), feature_stats(f2)
    t0 = time.perf_counter()
    ours = frechet_distance(m1, s1, m2, s2)
    t_ours = time.perf_counter() - t0
    a1, a2 = s1.numpy(), s2.numpy()
    t0 = time.perf_counter()
    root, _ = scipy.linalg.sqrtm(a1 @ a2, disp=False)
    ref = float(((m1 - m2) ** 2).sum()) + float(np.trace(a1) + np.trace(a2) - 2 * np.trace(root).real)
    t_sqrtm = time.perf_counter() - t0
    return {"dim": d, "breastgan_s": round(t_ours, 3), "scipy_sqrtm_s": round(t_sqrtm, 3), "speedup": round(t_sqrtm / t_ours, 1),
            "fid_breastgan": ours, "fid_sqrtm": ref, "rel_diff": abs(ours - ref) / abs(ref)}


def bench_full(n: int, size: int) -> dict:
    from breastgan.evaluation import evaluate

    real, fake = patches(n, size, 10), patches(n, size, 11, smooth=4)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        evaluate(real, fake, metrics=["fid"], cache_dir=Path(tmp) / "cache", n_boot=0, report=False)  # fills the real-set cache
        t_cache = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = evaluate(real, fake, out_dir=Path(tmp) / "out", cache_dir=Path(tmp) / "cache",
                           metrics=["fid", "kid", "prdc", "embedding-swd", "swd", "ms-ssim", "memorisation"],
                           options={"ms-ssim": {"n_pairs": 1000}})
        total = time.perf_counter() - t0
    return {"n": n, "size": size, "warm_real_cache_s": round(t_cache, 1), "evaluate_s": round(total, 1), "timings_s": summary["timings_s"],
            "values": {k: v["value"] for k, v in summary["metrics"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--full", type=int, default=0, help="also time evaluate() on N vs N patches (0: skip)")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write results here too")
    args = p.parse_args()
    results: dict = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__}}
    if not args.skip_features:
        results["features"] = bench_features(args.images, args.size, args.batch, args.rounds)
        print(json.dumps(results["features"], indent=1), flush=True)
    results["frechet"] = bench_frechet()
    print(json.dumps(results["frechet"], indent=1), flush=True)
    if args.full:
        results["full"] = bench_full(args.full, args.size)
        print(json.dumps(results["full"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
