"""Preparing all of mini-MIAS into 128x128 lesion and healthy patches: images/s with 1 vs N workers.

    python benchmarks/bench_prepare.py [--data ../shared/data/mini-mias] [--workers 1 2] [--repeats 1]

Each run prepares all 322 films (preflight + segmentation + laterality + patches + splits + writes)
into a temporary folder; images/s counts input films per wall-clock second of the whole prepare().
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from breastgan.data.adapters import default_data_root
from breastgan.data.prepare import load_config, prepare


def run(data: Path, workers: int, out: Path) -> tuple[float, int, int]:
    cfg = load_config(raw={
        "dataset": {"adapter": "minimias", "args": {"root": str(data)}},
        "output": str(out), "workers": workers, "mode": "lenient",
        "task": {"name": "patches", "args": {"size": 128, "healthy_per_image": 2}},
    })
    t0 = time.perf_counter()
    s = prepare(cfg)
    return time.perf_counter() - t0, s.inputs, s.items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=default_data_root() / "mini-mias")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if not (args.data / "Info.txt").is_file():
        raise SystemExit(f"{args.data}: mini-MIAS not found (set BREASTGAN_DATA or --data)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            best = None
            for r in range(args.repeats):
                secs, n_in, n_items = run(args.data, w, Path(tmp) / f"w{w}_{r}")
                best = secs if best is None else min(best, secs)
            rates[w] = n_in / best
            print(f"workers={w}: {n_in} films -> {n_items} patches in {best:.1f} s = {rates[w]:.1f} images/s")
    base = args.workers[0]
    for w in args.workers[1:]:
        print(f"speed-up {w} vs {base} worker(s): {rates[w] / rates[base]:.2f}x")


if __name__ == "__main__":
    main()
