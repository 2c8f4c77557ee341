"""DP-SGD discriminator: epsilon reported per unit, accountant restored on resume, never under-reported."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from sharing_helpers import TINY

import breastgan
from breastgan.config import ConfigError
from breastgan.training.dp import epsilon_of, patient_units, read_guarantee


def dp_config(**dp) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["model"]["discriminator"]["norm"] = "group"
    cfg["train"].update(checkpoint_every=5, dp={"enabled": True, "noise_multiplier": 1.0, **dp})
    return cfg


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return breastgan.train(dp_config(), run_dir=tmp_path_factory.mktemp("dp") / "run")


def test_epsilon_is_reported_and_grows_with_steps(dp_run):
    g = dp_run.summary["differential_privacy"]
    assert g["unit"] == "image" and g["n_units"] == 128 and g["steps"] == 10  # phantom data: no patient ids
    assert g["delta"] < 1 / 128 and g["sample_rate"] == pytest.approx(16 / 128)
    assert g["epsilon"] == pytest.approx(epsilon_of([(1.0, 16 / 128, 10)], g["delta"], "rdp"))
    at5 = read_guarantee(dp_run.run_dir / "checkpoints" / "step_00000005")
    assert 0 < at5["epsilon"] < g["epsilon"] and at5["steps"] == 5
    assert json.loads((dp_run.run_dir / "dp_ledger.json").read_text())["steps_accounted"] == 10


def test_resume_restores_the_accountant(dp_run, tmp_path):
    first = breastgan.train(dp_config(), run_dir=tmp_path / "r", overrides=["train.max_steps=5"])
    assert first.summary["differential_privacy"]["steps"] == 5
    resumed = breastgan.train(resume=tmp_path / "r", overrides=["train.max_steps=10"])
    assert resumed.summary["differential_privacy"]["steps"] == 10
    assert resumed.summary["differential_privacy"]["epsilon"] == pytest.approx(dp_run.summary["differential_privacy"]["epsilon"])


def test_steps_lost_after_the_last_checkpoint_are_still_counted(tmp_path):
    breastgan.train(dp_config(), run_dir=tmp_path / "r", overrides=["train.max_steps=5"])
    ledger = tmp_path / "r" / "dp_ledger.json"
    record = json.loads(ledger.read_text())
    record["steps_accounted"] = 8  # a crash after 3 more steps that never reached a checkpoint
    ledger.write_text(json.dumps(record))
    resumed = breastgan.train(resume=tmp_path / "r", overrides=["train.max_steps=10"])
    assert resumed.summary["differential_privacy"]["steps"] == 13


def test_dp_package_carries_the_guarantee(dp_run, tmp_path):
    from breastgan.sharing import verify_package
    from breastgan.sharing.package import export_package

    res = export_package(dp_run.run_dir, tmp_path / "p", force=True, override_reason="dp test")
    dp = res.manifest.differential_privacy
    assert dp is not None and dp.epsilon == pytest.approx(dp_run.summary["differential_privacy"]["epsilon"]) and dp.unit == "image"
    assert "epsilon=" in (tmp_path / "p" / "README.md").read_text()
    assert verify_package(tmp_path / "p").ok


def test_per_sample_clipping_bounds_each_contribution(tmp_path):
    from breastgan.config import load_config
    from breastgan.distributed import init_distributed
    from breastgan.training.trainer import Trainer

    cfg = load_config(dp_config(max_grad_norm=0.01))
    tr = Trainer(cfg, tmp_path / "t", init_distributed("cpu"))
    dp = tr.recipe.dp  # the GAN recipe's DP discriminator phase
    seen = {}
    original = dp.optimizer.clip_and_accumulate

    def spy():
        seen["n"] = len(dp.optimizer.grad_samples[0])
        original()
        seen["norm"] = torch.sqrt(sum((p.summed_grad ** 2).sum() for p in dp.optimizer.params)).item()

    dp.optimizer.clip_and_accumulate = spy
    stats = dp.d_step(tr.env)
    n = seen["n"]
    assert n == int(stats["dp_real_batch"]) + dp.expected_real  # one per-sample gradient per real and per fake image
    assert seen["norm"] <= n * 0.01 + 1e-6  # each clipped to max_grad_norm before summing

    # patients: Poisson over patients, one image each
    ds = SimpleNamespace(rows=[{"patient_id": p} for p in "aabccc"], info=SimpleNamespace(name="fake"))
    units, unit = patient_units(ds, "auto")
    assert unit == "patient" and [u.tolist() for u in units] == [[0, 1], [2], [3, 4, 5]]
    dp.units, dp.q = units, 0.7
    owner = {0: "a", 1: "a", 2: "b", 3: "c", 4: "c", 5: "c"}
    for _ in range(50):
        idx = dp._sample_units(tr.env).tolist()
        assert len({owner[i] for i in idx}) == len(idx)
    with pytest.raises(ValueError, match="needs patient ids"):
        patient_units(SimpleNamespace(rows=None, info=SimpleNamespace(name="phantom")), "patient")


@pytest.mark.parametrize("change, message", [
    ({"norm": "batch"}, "norm: group"),
    ({"delta": 0.5}, "must be below 1 / number"),
])
def test_invalid_dp_setups_are_refused(tmp_path, change, message):
    cfg = dp_config(**({"delta": change["delta"]} if "delta" in change else {}))
    if "norm" in change:
        cfg["model"]["discriminator"]["norm"] = change["norm"]
    with pytest.raises(ConfigError, match=message):
        breastgan.train(cfg, run_dir=tmp_path / "r")


def test_resuming_a_non_dp_run_with_dp_is_refused(tmp_path):
    cfg = dp_config()
    cfg["train"]["dp"]["enabled"] = False
    breastgan.train(cfg, run_dir=tmp_path / "r", overrides=["train.max_steps=5"])
    import yaml

    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    saved["train"]["dp"]["enabled"] = True
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="trained without DP"):
        breastgan.train(resume=tmp_path / "r", overrides=["train.max_steps=10"])
