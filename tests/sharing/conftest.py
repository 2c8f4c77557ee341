"""One tiny trained run and one exported package per session; tests that alter a package copy it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import breastgan
from breastgan.data.phantom import PhantomDataset
from sharing_helpers import TINY

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "generation"))  # handbuilt.py: hand-built run directories of every kind
LEGACY_PACKAGE = TESTS / "fixtures" / "legacy" / "package_v1"

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


@pytest.fixture
def package_v1(tmp_path) -> Path:
    """A private copy of the schema-v1 package recorded with breastgan 0.1.0 (a conditional DCGAN, latent 16)."""
    dst = tmp_path / "pkg_v1"
    shutil.copytree(LEGACY_PACKAGE, dst)
    return dst
