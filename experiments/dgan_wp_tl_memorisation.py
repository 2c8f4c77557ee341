"""Held-out KID and memorisation for every finished run of the DGAN-WP-TL sweeps (docs/experiments.md, issue 16).

The seed scores its samples against the whole malignant class, training images included, so a generator that
reproduces its 149 training images scores well. This script asks the two questions that protocol cannot answer,
through breastgan.evaluation for each run of each sweep output given:

- KID against the held-out malignant images only (val + test splits of the prepared set: images no run saw);
- memorisation: each sample's nearest training image (pixel RMSE over flips, SSIM, Inception features) against the
  same distance for the held-out images (nn_ratio < 1: samples sit nearer the training set than new real images do),
  and the share flagged as near-copies.

    python experiments/dgan_wp_tl_memorisation.py runs/sweeps/dgan_wp_tl_study runs/sweeps/dgan_wp_tl_replicates \
        --data runs/prepared/busi_64 --out runs/dgan_study/memorisation

Writes <out>/memorisation.csv and memorisation.md, and each run's metrics.json under <out>/<sweep>/<run>/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from breastgan.data.base import build_dataset
from breastgan.evaluation import evaluate
from breastgan.training.sweep import csv_text, markdown_table
from breastgan.utils.atomic import write_text_atomic

COLUMNS = ["sweep", "run", "KID held-out", "KID held-out 95% CI", "nn_ratio_pixel", "nn_ratio_ssim", "nn_ratio_feature",
           "near-copies", "n fake", "n train", "n held-out"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="sweep output folders (each with runs/ and results/)")
    ap.add_argument("--data", type=Path, required=True, help="the prepared BUSI set the runs trained on")
    ap.add_argument("--label", default="malignant")
    ap.add_argument("--n", type=int, default=200, help="samples per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    spec = {"path": str(a.data), "where": {"label": [a.label]}}
    train = build_dataset("prepared", {**spec, "split": "train"})
    heldout = build_dataset("prepared", {**spec, "split": None, "where": {"label": [a.label], "split": ["val", "test"]}})
    rows = []
    for sweep in a.sweeps:
        for result in sorted((sweep / "results").glob("*.json")):  # finished runs only: a result file is written last
            rid = json.loads(result.read_text())["id"]
            m = evaluate(heldout, sweep / "runs" / rid, n=a.n, metrics=["kid", "memorisation"], train=train, heldout=heldout,
                         options={"kid": {"subset_size": 50, "subsets": 100}}, seed=a.seed, n_boot=200,
                         out_dir=a.out / sweep.name / rid, report=False)["metrics"]
            kid = m["kid"]
            rows.append({
                "sweep": sweep.name, "run": rid, "KID held-out": kid["value"],
                "KID held-out 95% CI": "[{:.4f}, {:.4f}]".format(*kid["ci95"]) if kid.get("ci95") else "",
                **{k: m[k]["value"] for k in ("nn_ratio_pixel", "nn_ratio_ssim", "nn_ratio_feature") if k in m},
                "near-copies": m["near_copy_fraction"]["details"]["n_flagged"], "n fake": m["near_copy_fraction"]["n"]["fake"],
                "n train": m["near_copy_fraction"]["n"]["train"], "n held-out": m["near_copy_fraction"]["n"]["reference"],
            })
            print(rows[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out / "memorisation.csv", csv_text(COLUMNS, rows))
    write_text_atomic(a.out / "memorisation.md", markdown_table(COLUMNS, rows))


if __name__ == "__main__":
    main()
