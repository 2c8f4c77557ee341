"""Fixtures of the utility tests: two tiny trained generators and small hand-built pools."""

from __future__ import annotations

import pytest
import torch

import breastgan
from breastgan.utility.data import Pool


def _train_tiny_gan(run_dir, seed: int) -> str:
    cfg = {
        "name": f"tinygen{seed}",
        "data": {"source": {"dataset": "phantom", "n": 32, "size": 32, "seed": seed, "lesion_fraction": 1.0}},
        "model": {"generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16}, "discriminator": {"arch": "dcgan", "base_width": 8}},
        "train": {"max_steps": 2, "batch_size": 8, "progress": False, "sample_every": 1000, "checkpoint_every": 1000, "log_every": 1},
    }
    return str(breastgan.train(cfg, run_dir=run_dir).run_dir)


@pytest.fixture(scope="session")
def tiny_generators(tmp_path_factory):
    root = tmp_path_factory.mktemp("gens")
    return [_train_tiny_gan(root / f"gen{k}", 10 + k) for k in range(2)]


def _make_pool(n_per_class: dict[int, int], images_per_patient: int = 1, size: int = 16, source: str = "A", split: str = "train", seed: int = 0) -> Pool:
    g = torch.Generator().manual_seed(seed)
    labels = [c for c, n in sorted(n_per_class.items()) for _ in range(n)]
    n = len(labels)
    images = torch.rand(n, 1, size, size, generator=g)
    return Pool(images, torch.tensor(labels, dtype=torch.long), [f"{source}_p{i // images_per_patient}_{labels[i]}" for i in range(n)],
                [split] * n, [f"{source}_{i}" for i in range(n)], source)


@pytest.fixture
def make_pool():
    """Pool factory: ``make_pool({0: n0, 1: n1}, images_per_patient=..., source=...)`` with random images."""
    return _make_pool
