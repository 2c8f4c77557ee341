"""Only rank 0 writes: a 2-process run directory has exactly the single-process layout, one writer
per log, and nothing lands outside the run directory."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.distributed


def _layout(run_dir) -> set[str]:
    # TensorBoard event file names carry host, pid and time: compare how many there are, not their names
    return {str(p.relative_to(run_dir)) if p.parent.name != "tensorboard" else "tensorboard/<events>"
            for p in run_dir.rglob("*") if p.is_file()}


def test_run_directory_matches_single_process_layout(dcgan_runs):
    two, one = dcgan_runs["two"], dcgan_runs["one"]
    assert _layout(two) == _layout(one)
    # a second writer would add its own event file (another pid in the name)
    assert len(list((two / "tensorboard").iterdir())) == 1
    # no temporary files from an interrupted atomic write, and nothing written relative to the cwd
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]
    assert list(dcgan_runs["cwd"].iterdir()) == []


def test_logs_have_one_writer(dcgan_runs):
    two, one = dcgan_runs["two"], dcgan_runs["one"]
    rows2 = [json.loads(line) for line in (two / "logs" / "metrics.jsonl").read_text().splitlines()]
    rows1 = [json.loads(line) for line in (one / "logs" / "metrics.jsonl").read_text().splitlines()]
    # log_every = 2 over 6 steps: steps 2, 4, 6 once each (two writers would log each step twice)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == [2, 4, 6]
    run_record = json.loads((two / "run.json").read_text())
    assert len(run_record["sessions"]) == 1
    session = run_record["sessions"][0]
    assert (session["world_size"], session["per_process_batch"], session["effective_batch"]) == (2, 8, 16)
    assert session["backend"] == "gloo"
