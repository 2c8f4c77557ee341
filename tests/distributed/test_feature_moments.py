"""Feature statistics reduced over 2 processes equal one process's (FID difference < 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import HERE, run, torchrun_cmd

pytestmark = pytest.mark.distributed


def test_two_rank_statistics_equal_single_process(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("moments_worker", HERE / "moments_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = worker.single_process()

    out = tmp_path / "two.json"
    cmd = torchrun_cmd(2, str(out))
    cmd[cmd.index(str(HERE / "toy_cli.py"))] = str(HERE / "moments_worker.py")
    run(cmd)
    two = json.loads(Path(out).read_text())

    assert two["n"] == single["n"] == worker.N
    mean_diff = (torch.tensor(two["mean"]) - torch.tensor(single["mean"])).abs().max().item()
    cov_diff = (torch.tensor(two["cov"]) - torch.tensor(single["cov"])).abs().max().item()
    assert mean_diff < 1e-12 and cov_diff < 1e-12  # float64 sums in another order: rounding only
    assert abs(two["fid"] - single["fid"]) < 1e-6
    assert single["fid"] > 1.0  # a real distance between different Gaussians, not a trivial 0 == 0
