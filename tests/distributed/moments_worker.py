"""Worker for test_feature_moments: each rank accumulates feature statistics over its share of a
deterministic feature set, the ranks reduce them, and rank 0 writes mean, covariance and FID."""

from __future__ import annotations

import json
import sys

import torch

from breastgan.distributed import init_distributed, shutdown
from breastgan.evaluation.features import RunningStats
from breastgan.evaluation.fid import frechet_distance

N, DIM, BATCH = 301, 24, 32  # 301 rows: 10 batches, the last one short and on rank 1


def features() -> torch.Tensor:
    """Correlated, offset features (as a network's would be), the same in every process."""
    g = torch.Generator().manual_seed(123)
    mix = torch.randn(DIM, DIM, generator=g) / DIM**0.5
    return (torch.randn(N, DIM, generator=g) @ mix + 3.0).float()


def reference() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(DIM, DIM, generator=g, dtype=torch.float64) / DIM**0.5
    return torch.full((DIM,), 2.5, dtype=torch.float64), a @ a.T + 0.1 * torch.eye(DIM, dtype=torch.float64)


def single_process() -> dict:
    stats = RunningStats(DIM)
    f = features()
    for a in range(0, N, BATCH):
        stats.update(f[a : a + BATCH])
    return result(stats)


def result(stats: RunningStats) -> dict:
    mu_ref, cov_ref = reference()
    return {"n": stats.n, "mean": stats.mean.tolist(), "cov": stats.cov.tolist(),
            "fid": frechet_distance(stats.mean, stats.cov, mu_ref, cov_ref)}


def main(out: str) -> None:
    ctx = init_distributed("cpu")
    try:
        stats = RunningStats(DIM)
        f = features()
        for i, a in enumerate(range(0, N, BATCH)):
            if i % ctx.world_size == ctx.rank:
                stats.update(f[a : a + BATCH])
        stats.all_reduce(ctx)
        if ctx.is_main:
            with open(out, "w") as fh:
                json.dump(result(stats), fh)
    finally:
        shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
