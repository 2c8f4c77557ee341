"""Failure handling across processes: a lost rank is named, signals stop the run with a final
checkpoint, ranks that disagree on config or data refuse to start, and a 2-process run resumes
with 1 process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TEST_TIMEOUT_S, child_env, latest_checkpoint, read_json, run, single_cmd, toy_config, torchrun_cmd

pytestmark = pytest.mark.distributed


def _flat(text: str) -> str:
    """Undo torchrun's ``[rankN]:`` prefixes and rich's line wrapping, so phrases can be searched."""
    text = re.sub(r"\[rank\d+\]:\s?", "", text)
    return re.sub(r"\s+", " ", text)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}\n{err[-4000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A 2-process run that would take minutes; returns once both ranks train (first checkpoint written)."""
    cfg = toy_config(tmp_path / "cfg.yaml", max_steps=100_000, checkpoint_every=5)
    run_dir = tmp_path / "run"
    env = child_env(BREASTGAN_TEST_PID_DIR=str(tmp_path), COLUMNS="200")
    proc = subprocess.Popen(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(run_dir)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*")), 60, proc,
              "the first checkpoint")
    return proc, run_dir


def _pid(tmp_path: Path, rank: int) -> int:
    return int((tmp_path / f"rank{rank}.pid").read_text())


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_is_named_by_the_survivor(tmp_path, victim):
    proc, _ = _start_long_run(tmp_path)
    survivor = 1 - victim
    os.kill(_pid(tmp_path, victim), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=float(TEST_TIMEOUT_S) + 20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the surviving rank hung after its peer was killed")
    elapsed = time.monotonic() - t0
    text = _flat(out + err)
    assert proc.returncode != 0
    # the survivor's own diagnosis (torchrun's summary names the root cause too, but not in these words)
    assert f"rank {survivor}: collective" in text and f"rank {victim} was lost" in text, text[-3000:]
    assert elapsed < float(TEST_TIMEOUT_S) + 15


@pytest.mark.parametrize("target", ["one rank", "process group"])
def test_sigterm_stops_all_ranks_with_a_final_checkpoint(tmp_path, target):
    proc, run_dir = _start_long_run(tmp_path)
    if target == "one rank":
        os.kill(_pid(tmp_path, 1), signal.SIGTERM)  # rank 0 learns of it through the all-reduced stop flag
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does; each worker also gets the agent's forwarded SIGTERM
    out, err = proc.communicate(timeout=60)
    summary = read_json(run_dir / "summary.json")
    assert summary["stopped_early"] is True
    assert 5 <= summary["step"] < 100_000
    assert latest_checkpoint(run_dir).name == f"step_{summary['step']:08d}"
    assert read_json(latest_checkpoint(run_dir) / "meta.json")["world_size"] == 2
    text = _flat(out + err)
    assert text.count("stop requested (signal)") == 2  # both ranks took the graceful path
    # not a success: every rank exits 128 + SIGTERM, so the scheduler (and torchrun) sees the interruption
    assert proc.returncode != 0 and text.count("stopped by SIGTERM") == 2, err[-3000:]


def test_config_mismatch_between_ranks_is_refused(tmp_path):
    toy_config(tmp_path / "cfg0.yaml")
    toy_config(tmp_path / "cfg1.yaml", seed=1)
    proc = run(torchrun_cmd(2, "train", "--config", str(tmp_path / "cfg{rank}.yaml"), "--run-dir", str(tmp_path / "run")),
               env=child_env(COLUMNS="200"), check=False)
    assert proc.returncode != 0
    assert "configuration differs between ranks: rank(s) [1] disagree with rank 0" in _flat(proc.stdout + proc.stderr)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dataset_mismatch_between_ranks_is_refused(tmp_path):
    cfg = toy_config(tmp_path / "cfg.yaml")
    proc = run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")),
               env=child_env(BREASTGAN_TEST_SKEW_RANK="1", COLUMNS="200"), check=False)
    assert proc.returncode != 0
    assert "dataset differs between ranks: rank(s) [1] disagree with rank 0" in _flat(proc.stdout + proc.stderr)


def test_two_process_run_resumes_with_one_process(tmp_path):
    cfg = toy_config(tmp_path / "cfg.yaml", max_steps=3)  # stops mid-epoch: 3 of 4 global batches of 16
    run_dir = tmp_path / "run"
    run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(run_dir)))
    proc = run(single_cmd("train", "--resume", str(run_dir), "--set", "train.max_steps=6"), env=child_env(COLUMNS="200"))
    text = _flat(proc.stdout + proc.stderr)
    assert "resuming a 2-process run with 1 process(es)" in text and "effective batch is now 8 (was 16)" in text
    meta = read_json(latest_checkpoint(run_dir) / "meta.json")
    assert (meta["world_size"], meta["effective_batch"]) == (1, 8)
    summary = read_json(run_dir / "summary.json")
    assert summary["step"] == 6
    # the 48 samples already seen map to batch 6 of 8 at the new batch size; steps 4-6 then use
    # batches 6, 7 and the first batch of epoch 1 (without the mapping they would stay in epoch 0)
    assert summary["epoch"] == 1
    assert [s["world_size"] for s in read_json(run_dir / "run.json")["sessions"]] == [2, 1]
