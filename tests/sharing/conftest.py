"""One tiny trained run and one exported package per session; tests that alter a package copy it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import breastgan
from breastgan.data.phantom import PhantomDataset
from sharing_helpers import TINY

FAST_AUDIT = {"n_samples": 100, "n_boot": 20, "n_candidates": 48, "inversion": {"steps": 10, "restarts": 1}}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return breastgan.train(TINY, run_dir=tmp_path_factory.mktemp("sharing") / "run").run_dir


@pytest.fixture(scope="session")
def holdout_images() -> torch.Tensor:
    return PhantomDataset(n=64, size=32, seed=11).images


@pytest.fixture(scope="session")
def exported(tiny_run, holdout_images, tmp_path_factory) -> Path:
    from breastgan.sharing.package import export_package

    out = tmp_path_factory.mktemp("pkg") / "tiny-pkg"
    export_package(tiny_run, out, holdout=holdout_images, audit=FAST_AUDIT, name="tiny-phantom", licence="CC-BY-4.0",
                   force=True, override_reason="tiny test model (audit recorded either way)")
    return out


@pytest.fixture
def package(exported, tmp_path) -> Path:
    """A private copy of the exported package that a test may tamper with."""
    dst = tmp_path / "pkg"
    shutil.copytree(exported, dst)
    return dst
