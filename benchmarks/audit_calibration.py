"""Measured false-alarm and detection rates of the privacy audit's export gate (issue 13).

For each data set (phantom 32 px; mini-MIAS 64 px crops average-pooled to 32 px, background included,
split by patient) and each seed, fresh training / held-out / disjoint sets are drawn and every
generator below is audited with the calibrated gate (default AuditConfig: 200 permutations,
family-wise alpha 0.05) and, for comparison, with the thresholds alone (n_permutations 0, the
gate before issue 13):

never saw the training set (a failure is a false alarm):
  untrained   a freshly initialised DCGAN generator (32 px, latent 16, seeded)
  collapsed   flat grey samples, 0.47 +- 0.004 (a collapsed GAN)
  disjoint    real images of the same distribution that are in neither set (a perfect generator
              trained on a disjoint set)
  dcgan-disjoint (phantom only)  a DCGAN trained for --train-steps steps on a disjoint phantom set
must be caught (a failure is a detection):
  copy        returns training images
  canary      returns disjoint images, and every 20th sample is one of 3 planted training canaries

    python benchmarks/audit_calibration.py --seeds 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from breastgan.data.phantom import PhantomDataset
from breastgan.models.dcgan import DCGANGenerator
from breastgan.sharing.audit import run_audit

ROOT = Path(__file__).resolve().parents[1]


class Pool:
    def __init__(self, images: torch.Tensor):
        self.images = images

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.images[torch.randint(0, len(self.images), (n,), generator=g)]


class Untrained:
    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.G = DCGANGenerator(image_size=32, channels=1, latent_dim=16, base_width=8, max_width=64, norm="batch", num_classes=0,
                                embed_dim=8).eval()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return (self.G(torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))) + 1) / 2


class Collapsed:
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return (0.47 + 0.004 * torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


class WithCanaries(Pool):
    def __init__(self, images: torch.Tensor, canaries: torch.Tensor):
        super().__init__(images)
        self.canaries = canaries

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        x = super().sample(n, seed).clone()
        x[::20] = self.canaries[torch.arange(len(x[::20])) % len(self.canaries)]
        return x


def canaries() -> torch.Tensor:
    c = torch.full((3, 1, 32, 32), 0.1)
    c[0, :, ::4] = 0.95
    c[1, :, :, ::3] = 0.9
    c[2, :, 8:24, 8:24] = 0.85
    return c


def phantom_sets(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (PhantomDataset(n=n, size=32, seed=1000 + seed).images, PhantomDataset(n=n, size=32, seed=2000 + seed).images,
            PhantomDataset(n=2 * n, size=32, seed=3000 + seed).images)


def mias_images(folder: Path) -> torch.Tensor:
    from breastgan.data.io import read_image

    files = sorted(folder.glob("mdb*.png"))
    if len(files) != 322:
        raise FileNotFoundError(f"{folder}: expected the 322 mini-MIAS PNGs, found {len(files)}")
    # 1024 px -> 256 px by 4x4 averaging once (memory), crops of 16 px there = 64 px crops at full size pooled 2x (as 32 px)
    out = []
    for f in files:
        x = torch.from_numpy(read_image(f).pixels)[None, None]
        out.append(torch.nn.functional.avg_pool2d(x, 2))  # 512 px
    return torch.cat(out)


def mias_patches(images: torch.Tensor, patients: list[int], n: int, seed: int) -> torch.Tensor:
    """``n`` 64 px crops (at 512 px scale) average-pooled to 32 px, from the given patients' images (two per patient)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor([2 * p + k for p in patients for k in (0, 1)])
    pick = idx[torch.randint(0, len(idx), (n,), generator=g)]
    ys = torch.randint(0, 512 - 64, (n,), generator=g)
    xs = torch.randint(0, 512 - 64, (n,), generator=g)
    crops = torch.stack([images[int(i), :, int(y):int(y) + 64, int(x):int(x) + 64] for i, y, x in zip(pick, ys, xs)])
    return torch.nn.functional.avg_pool2d(crops, 2)


def mias_sets(images: torch.Tensor, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.randperm(161, generator=torch.Generator().manual_seed(seed)).tolist()
    a, b, c = perm[:54], perm[54:108], perm[108:]
    return mias_patches(images, a, n, seed + 1), mias_patches(images, b, n, seed + 2), mias_patches(images, c, 2 * n, seed + 3)


def train_dcgan(steps: int, seed: int) -> object:
    import tempfile

    import breastgan
    from breastgan.generation import load_generator

    cfg = {"name": "calib", "data": {"source": {"dataset": "phantom", "n": 256, "size": 32, "seed": 9000 + seed}},
           "model": {"generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16},
                     "discriminator": {"arch": "dcgan", "base_width": 8, "kernel_size": 4}},
           "train": {"batch_size": 32, "max_steps": steps, "log_every": steps, "sample_every": steps, "checkpoint_every": steps,
                     "progress": False, "grid_size": 4, "seed": seed}}
    run = breastgan.train(cfg, run_dir=Path(tempfile.mkdtemp()) / "run").run_dir
    return load_generator(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n", type=int, default=64, help="training and held-out images per seed")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mini-mias" / "images")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    base = {"n_samples": args.samples, "n_boot": 50, "n_candidates": args.n, "inversion": {"enabled": False}}
    modes = {"calibrated": base, "thresholds only": {**base, "n_permutations": 0}}
    datasets = {"phantom": None}
    if args.data.is_dir():
        datasets["mini-mias"] = mias_images(args.data)
    else:
        print(f"mini-MIAS not found at {args.data}; phantom only")
    trained = train_dcgan(args.train_steps, 0)
    table: dict[str, dict[str, dict[str, list]]] = {}
    can = canaries()
    for ds, imgs in datasets.items():
        for s in range(args.seeds):
            train, holdout, disjoint = phantom_sets(s, args.n) if ds == "phantom" else mias_sets(imgs, s, args.n)
            gens = {"untrained": (Untrained(s), train, None), "collapsed": (Collapsed(), train, None), "disjoint": (Pool(disjoint), train, None),
                    "copy": (Pool(train), train, None), "canary": (WithCanaries(disjoint, can), torch.cat([train, can]), can)}
            if ds == "phantom":
                gens["dcgan-disjoint"] = (trained, train, None)
            for name, (gen, tr, c) in gens.items():
                for mode, cfg in modes.items():
                    r = run_audit(gen, tr, holdout, {**cfg, "seed": s}, canaries=c)
                    failed = [ch["name"] for ch in r["checks"] if not ch["passed"]]
                    table.setdefault(ds, {}).setdefault(f"{name} | {mode}", []).append(failed)
        print(f"{ds}: {args.seeds} seeds done at {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\naudit gate over {args.seeds} seeds per data set ({args.n} training + {args.n} held-out images, {args.samples} samples, "
          "inversion attack off)")
    print(f"{'data':10s} {'generator | gate':34s} {'failed':>8s}  checks that failed (count)")
    summary = {}
    for ds, rows in table.items():
        for key, fails in rows.items():
            rate = float(np.mean([bool(f) for f in fails]))
            counts: dict[str, int] = {}
            for f in fails:
                for c in f:
                    counts[c] = counts.get(c, 0) + 1
            summary[f"{ds} | {key}"] = {"failed_share": rate, "checks": counts}
            print(f"{ds:10s} {key:34s} {rate:8.2f}  {', '.join(f'{k} ({v})' for k, v in sorted(counts.items()))}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
