"""Run directories and v1 generator packages made by breastgan 0.1.0 keep working, image for image.

The fixtures in tests/fixtures/legacy were recorded with the pre-redesign code (record_legacy.py there):
``generate`` from the old run (EMA, raw, snapshot ensemble) and from the v1 package must write
byte-identical PNGs on the recording build, and the same images within 1e-6 elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
sys.path[:0] = [str(LEGACY), str(LEGACY.parent)]
import record_legacy as record  # noqa: E402
from environment import same_float_environment  # noqa: E402

EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def legacy_copies(tmp_path):
    """Copies, so no test can change the fixtures (a resume would add checkpoints)."""
    run, pkg = tmp_path / "run_v1", tmp_path / "package_v1"
    shutil.copytree(LEGACY / "run_v1", run)
    shutil.copytree(LEGACY / "package_v1", pkg)
    return run, pkg


def test_old_run_and_v1_package_generate_the_same_images(legacy_copies, tmp_path):
    run, pkg = legacy_copies
    images = record.generate_all(run, pkg, tmp_path / "out")
    stored = load_file(str(LEGACY / "expected_images.safetensors"))
    for name, x in images.items():
        torch.testing.assert_close(x, stored[name], atol=1e-6, rtol=0, msg=name)
    if same_float_environment(EXPECTED["environment"]):
        for name, files in EXPECTED["png_sha256"].items():
            got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "out" / name).glob("*.png"))}
            assert got == files, name


def test_v1_package_still_verifies(legacy_copies):
    from breastgan.sharing import verify_package

    report = verify_package(legacy_copies[1])
    assert report.ok, report.checks
