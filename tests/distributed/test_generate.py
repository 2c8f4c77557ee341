"""``torchrun -m breastgan generate`` with 2 ranks writes the very files 1 process writes."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run, torchrun_cmd

pytestmark = pytest.mark.distributed


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_two_ranks_write_the_same_bytes_as_one(trained_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # 300 images in blocks of 64: 5 blocks, so rank 0 writes 3 and rank 1 writes 2 (the last one short)
    run([sys.executable, "-m", "breastgan", "generate", "--run", str(trained_run), "-n", "300", "--out", str(one)])
    run(torchrun_cmd(2, "generate", "--run", str(trained_run), "-n", "300", "--out", str(two), module=True))
    a, b = _files(one), _files(two)
    assert len(a) == 301 and "manifest.json" in a  # 300 images + the manifest, nothing else (no temporaries)
    assert a.keys() == b.keys()
    differing = sorted(name for name in a if a[name] != b[name])
    assert differing == []
    manifest = json.loads(b["manifest.json"])
    assert [f["index"] for f in manifest["files"]] == list(range(300))
    # the images are not all alike (a broken sampler writing one image 300 times would also "match")
    assert len({a[name] for name in a if name.endswith(".png")}) == 300
