"""Helpers for the multi-process tests: launch ``torch.distributed.run`` on localhost with gloo.

Every test launches real processes (``python -m torch.distributed.run``, i.e. torchrun) running the
ordinary CLI through ``toy_cli.py``, which adds a tiny deterministic dataset. Single-process
references run the same script without torchrun, the documented single-process path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
TOY_CLI = HERE / "toy_cli.py"
# a lost peer must be reported quickly in tests; the heartbeat diagnosis itself takes ~2 s
TEST_TIMEOUT_S = "20"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # one thread per process: the machine has 2 cores, and 1- and 2-process runs then do the same per-process arithmetic
    env.update({"OMP_NUM_THREADS": "1", "BREASTGAN_DIST_TIMEOUT": TEST_TIMEOUT_S, "PYTHONUNBUFFERED": "1"})
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.update(extra)
    return env


def torchrun_cmd(nproc: int, *args: str, module: bool = False) -> list[str]:
    """``torchrun --nproc_per_node=N`` (as ``python -m torch.distributed.run``) on a free localhost port."""
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
              "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    # "--" ends torchrun's own options: without it, Python 3.11's argparse rejects breastgan's
    # ``--run`` as an ambiguous abbreviation of torchrun's ``--run-path`` (docs/distributed.md)
    target = ["-m", "breastgan", "--"] if module else [str(TOY_CLI)]
    return launch + target + list(args)


def single_cmd(*args: str) -> list[str]:
    return [sys.executable, str(TOY_CLI), *args]


def run(cmd: list[str], *, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or child_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed (rc {proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def toy_config(path: Path, *, arch: str = "dcgan", loss: str = "nonsaturating", batch_size: int = 8, max_steps: int = 6,
               n_critic: int = 1, **train: object) -> Path:
    """A tiny config on the toy dataset: base width 8, 32 px, per-sample norms (see test_equivalence)."""
    if arch == "wgan_gp_critic":
        d = {"arch": "wgan_gp_critic", "base_width": 8}
    else:
        d = {"arch": "dcgan", "base_width": 8, "norm": "layer"}
    cfg = {
        "name": "toy",
        "data": {"source": {"dataset": "toy"}},
        "model": {"generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16, "norm": "instance"}, "discriminator": d},
        "loss": {"name": loss, **({"label_smoothing": [0.8, 1.1]} if loss == "nonsaturating" else {})},
        "train": {
            "max_steps": max_steps, "n_critic": n_critic, "batch_size": batch_size, "log_every": 2,
            "checkpoint_every": 1000, "sample_every": 1000, "grid_size": 4, "progress": False,
            "augment": {"policy": "diffaugment"}, "device": "cpu",
            # a fast EMA, so the EMA weights move measurably within a few steps and get compared too
            "ema": {"decay": 0.5}, **train,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def latest_checkpoint(run_dir: Path) -> Path:
    steps = sorted((run_dir / "checkpoints").glob("step_*"))
    assert steps, f"{run_dir}: no checkpoint"
    return steps[-1]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def dcgan_runs(tmp_path_factory) -> dict[str, Path]:
    """The same 6-step DCGAN run as 2 processes x batch 8 and as 1 process x batch 16 (shared by two tests)."""
    root = tmp_path_factory.mktemp("dcgan_runs")
    cfg2 = toy_config(root / "two.yaml", batch_size=8)
    cfg1 = toy_config(root / "one.yaml", batch_size=16)
    # rank 1's working directory is the same as rank 0's; a stray relative write would land here
    (root / "cwd").mkdir()
    run(torchrun_cmd(2, "train", "--config", str(cfg2), "--run-dir", str(root / "two")), cwd=root / "cwd")
    run(single_cmd("train", "--config", str(cfg1), "--run-dir", str(root / "one")), cwd=root / "cwd")
    return {"two": root / "two", "one": root / "one", "cwd": root / "cwd"}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A quick single-process run to generate from."""
    root = tmp_path_factory.mktemp("trained")
    cfg = toy_config(root / "cfg.yaml", batch_size=16, max_steps=3)
    run(single_cmd("train", "--config", str(cfg), "--run-dir", str(root / "run")))
    return root / "run"
