"""Shared fixtures. Real data: ../shared/data from the repo root, or $BREASTGAN_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP's default busy-waiting makes 2 threads on a shared 2-core machine (and several test processes)
# 3-10x slower; passive waiting changes no result (same threads, same arithmetic). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("BREASTGAN_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def tiny_config() -> dict:
    """A fast run on 32x32 phantom patches with small networks."""
    return {
        "name": "tiny",
        "data": {"source": {"dataset": "phantom", "n": 256, "size": 32, "seed": 3}},
        "model": {
            "generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16},
            "discriminator": {"arch": "dcgan", "base_width": 8, "kernel_size": 4},
        },
        "loss": {"name": "nonsaturating", "label_smoothing": [0.8, 1.1]},
        "train": {"batch_size": 16, "max_steps": 12, "log_every": 2, "sample_every": 6, "checkpoint_every": 6, "progress": False, "grid_size": 16},
    }
