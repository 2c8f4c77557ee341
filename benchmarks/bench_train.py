"""DCGAN-128 training throughput: breastgan's trainer vs a plain PyTorch loop, same run, same machine.

The reference loop is written here by hand (DCGAN generator, discriminator with kernel 6, BCE with
logits, Adam) so the comparison measures breastgan's overhead (config, sampler, flips, label-smoothing
draws, EMA, finiteness checks, logging), not a different network. Each measurement runs in its own
subprocess so peak memory (max RSS) is attributed correctly.

    python benchmarks/bench_train.py --batches 16 64 --steps 12

Prints images/s and peak RSS per mode and the ratios breastgan/reference (target: speed >= 0.9,
memory <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn


def reference_models(size: int = 128, latent: int = 100, base: int = 64):
    g_layers = [nn.ConvTranspose2d(latent, 512, 4, 1, 0, bias=False), nn.BatchNorm2d(512), nn.ReLU(True)]
    widths = [512, 512, 256, 128, 64]  # 4 -> 8 -> 16 -> 32 -> 64
    for a, b in zip(widths[:-1], widths[1:]):
        g_layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    g_layers += [nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh()]
    d_layers = [nn.Conv2d(1, 64, 6, 2, 2), nn.LeakyReLU(0.2, True)]
    dw = [64, 128, 256, 512, 512]  # 64 -> 32 -> 16 -> 8 -> 4
    for a, b in zip(dw[:-1], dw[1:]):
        d_layers += [nn.Conv2d(a, b, 6, 2, 2, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
    d_layers += [nn.Conv2d(512, 1, 4, 1, 0), nn.Flatten(0)]
    return nn.Sequential(*g_layers), nn.Sequential(*d_layers)


def run_reference(batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    G, D = reference_models()
    og = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    data = torch.rand(max(512, batch * 4), 1, 128, 128) * 2 - 1
    bce = nn.BCEWithLogitsLoss()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        real = data[(i * batch) % (len(data) - batch):][:batch]
        z = torch.randn(batch, 100, 1, 1)
        fake = G(z)
        loss_d = bce(D(real), torch.ones(batch)) + bce(D(fake.detach()), torch.zeros(batch))
        od.zero_grad(); loss_d.backward(); od.step()
        loss_g = bce(D(fake), torch.ones(batch))
        og.zero_grad(); loss_g.backward(); og.step()
        loss_d.item(), loss_g.item()
    return batch * steps / (time.perf_counter() - t0)


def run_breastgan(batch: int, steps: int, warmup: int) -> float:
    import breastgan

    cfg = {
        "data": {"source": {"dataset": "phantom", "n": max(512, batch * 4), "size": 128}},
        "model": {"generator": {"arch": "dcgan", "base_width": 64}, "discriminator": {"arch": "dcgan", "base_width": 64, "kernel_size": 6}},
        "loss": {"name": "nonsaturating", "label_smoothing": [0.8, 1.1]},
        "train": {"batch_size": batch, "max_steps": warmup + steps, "log_every": 1, "sample_every": 10**6,
                  "checkpoint_every": 10**6, "progress": False, "deterministic": False},
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = breastgan.train(cfg, run_dir=f"{tmp}/run")
        records = [json.loads(x) for x in open(f"{tmp}/run/logs/metrics.jsonl")]
    times = [r["time"] for r in records if "images_per_s" in r]
    # images/s over the timed steps, from the per-step log timestamps (the final checkpoint is excluded)
    return batch * steps / (times[warmup + steps - 1] - times[warmup - 1])


def child(mode: str, batch: int, steps: int, warmup: int) -> None:
    torch.set_num_threads(torch.get_num_threads())
    ips = (run_reference if mode == "reference" else run_breastgan)(batch, steps, warmup)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "batch": batch, "images_per_s": ips, "max_rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate modes this many times; the best of each is kept")
    ap.add_argument("--baseline-src", default=None, metavar="DIR",
                    help="also time the breastgan trainer of another source tree (e.g. a git worktree of an older commit): "
                         "before/after numbers from the same run")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "BATCH", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], *map(int, args.child[1:]))
        return
    modes = ["reference", "breastgan"] + (["baseline"] if args.baseline_src else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, DCGAN-128 (G 64..512 ch, D kernel 6)")
    extra = f" {'base img/s':>10} {'base ratio':>10}" if args.baseline_src else ""
    print(f"{'batch':>5} {'ref img/s':>10} {'bg img/s':>10} {'speed ratio':>11} {'ref MB':>8} {'bg MB':>8} {'mem ratio':>9}{extra}")
    for batch in args.batches:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for mode in modes:
                env = dict(os.environ)
                if mode == "baseline":
                    env["PYTHONPATH"] = os.path.join(os.path.abspath(args.baseline_src), "src")
                out = subprocess.run([sys.executable, __file__, "--child", "breastgan" if mode == "baseline" else mode, str(batch),
                                      str(args.steps), str(args.warmup)], capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
                rec = json.loads(out)
                if mode not in best or rec["images_per_s"] > best[mode]["images_per_s"]:
                    best[mode] = rec
        r, b = best["reference"], best["breastgan"]
        line = (f"{batch:>5} {r['images_per_s']:>10.2f} {b['images_per_s']:>10.2f} {b['images_per_s'] / r['images_per_s']:>11.3f} "
                f"{r['max_rss_mb']:>8.0f} {b['max_rss_mb']:>8.0f} {b['max_rss_mb'] / r['max_rss_mb']:>9.3f}")
        if args.baseline_src:
            base = best["baseline"]
            line += f" {base['images_per_s']:>10.2f} {base['images_per_s'] / r['images_per_s']:>10.3f}"
        print(line)


if __name__ == "__main__":
    main()
