"""One trainer per run directory, and an interrupted run says so in its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import breastgan
from breastgan.training.run_lock import LOCK_NAME, RunDirLock, RunLockedError


def _start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "breastgan", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def long_config(tiny_config, tmp_path):
    tiny_config["train"].update(max_steps=100_000, checkpoint_every=5, log_every=50)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    return cfg


def test_a_second_trainer_on_the_same_run_is_refused_with_the_holder(long_config, tmp_path):
    run = tmp_path / "r"
    first = _start(["train", "--config", str(long_config), "--run-dir", str(run)], tmp_path)
    try:
        _wait_for(run / "checkpoints" / "step_00000005" / "meta.json", first)
        second = subprocess.run([sys.executable, "-m", "breastgan", "train", "--resume", str(run)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"already being trained by PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
        with pytest.raises(RunLockedError, match=f"PID {first.pid}"):
            breastgan.train(resume=run)
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    # SIGTERM: final checkpoint, 128 + 15, and a last line that says how to continue
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["stop_signal"] == signal.SIGTERM
    assert (run / LOCK_NAME).read_text() == ""  # released cleanly
    more = breastgan.train(resume=run, overrides=[f"train.max_steps={summary['step'] + 2}"])
    assert more.step == summary["step"] + 2 and not more.stopped_early


def test_a_lock_left_by_a_killed_trainer_is_taken_over_and_named(long_config, tmp_path, caplog):
    run = tmp_path / "r"
    victim = _start(["train", "--config", str(long_config), "--run-dir", str(run)], tmp_path)
    _wait_for(run / "checkpoints" / "step_00000005" / "meta.json", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == victim.pid  # the record survives, the kernel lock does not
    lock = RunDirLock(run).acquire()
    try:
        assert lock.stale["pid"] == victim.pid
    finally:
        lock.release()
