"""Parts of the loop and the GAN recipe: EMA paired by name, loss terms, frozen parameters, progress
lines for batch jobs, `breastgan models`, and resuming a run made by breastgan 0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import breastgan
from breastgan.config import ConfigError
from breastgan.models.dcgan import DCGANDiscriminator, DCGANDiscriminatorArgs
from breastgan.models.registry import DISCRIMINATORS
from breastgan.training.ema import EMA, EMAMismatchError

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


# -- EMA ---------------------------------------------------------------------------------------------
def test_ema_pairs_by_name_and_refuses_a_grown_module():
    small = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    ema = EMA(small, decay=0.5)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)
    ema.update(small, step=100)
    for (name, e), (_, p) in zip(ema.model.named_parameters(), small.named_parameters()):
        assert torch.allclose(e, p - 0.5), name  # halfway from the old to the new weights
    grown = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    with pytest.raises(EMAMismatchError, match="only in module"):
        ema.update(grown, step=101)
    same_names_other_shape = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1))
    with pytest.raises(EMAMismatchError, match="has shape"):
        ema.update(same_names_other_shape, step=101)
    # re-paired after a rebuild: surviving tensors keep their average, new ones start from the module
    wider = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1), nn.Linear(1, 1))
    rebuilt = ema.rebuilt(wider)
    assert torch.equal(rebuilt.model[0].weight, ema.model[0].weight) and torch.equal(rebuilt.model[2].weight, wider[2].weight)
    rebuilt.update(wider, step=102)


# -- loss terms ------------------------------------------------------------------------------------------
def test_wgan_gp_logs_the_penalty_and_drift_as_their_own_terms(tiny_config, tmp_path):
    tiny_config["model"]["discriminator"] = {"arch": "wgan_gp_critic", "base_width": 8}
    tiny_config["loss"] = {"name": "wgan-gp", "gp_lambda": 10, "drift": 0.001}
    run = breastgan.train(tiny_config, run_dir=tmp_path / "w", overrides=["train.max_steps=4", "train.n_critic=2"]).run_dir
    last = _records(run)[-1]
    assert last["gp"] > 0 and last["drift"] > 0 and "loss_d" in last


def test_configured_terms_and_aux_classification(tiny_config, tmp_path):
    tiny_config["data"]["conditional"] = True
    tiny_config["model"]["discriminator"]["aux_classifier"] = True
    tiny_config["loss"] = {"name": "hinge", "terms": [{"term": "aux_classification", "weight": 1.0, "phase": "discriminator"},
                                                      {"term": "aux_classification", "weight": 0.5, "phase": "generator"},
                                                      {"term": "drift", "weight": 0.001}]}
    run = breastgan.train(tiny_config, run_dir=tmp_path / "ac", overrides=["train.max_steps=4"]).run_dir
    last = _records(run)[-1]
    # cross-entropy over 2 classes starts near log 2
    assert 0.1 < last["aux_cls_d"] < 3 and 0.05 < last["aux_cls_g"] < 2 and "drift" in last
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert [t["term"] for t in cfg["loss"]["terms"]] == ["aux_classification", "aux_classification", "drift"]
    tiny_config["model"]["discriminator"]["aux_classifier"] = False
    with pytest.raises(ConfigError, match="aux_classifier: true"):
        breastgan.train(tiny_config, run_dir=tmp_path / "bad")


def test_unknown_term_option_names_the_key(tiny_config):
    tiny_config["loss"]["terms"] = [{"term": "drift", "weight": 1, "wieght": 2}]
    with pytest.raises(ConfigError, match="loss.terms.0.*wieght: unknown option for 'drift'"):
        breastgan.load_config(tiny_config)


# -- frozen parameters -------------------------------------------------------------------------------------
class _FrozenBranchArgs(DCGANDiscriminatorArgs):
    pass


class FrozenBranchD(DCGANDiscriminator):
    """A DCGAN discriminator plus a frozen 'pretrained' branch (as DGAN-WP-TL's VGG19 path)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.branch = nn.Conv2d(kw["channels"], 2, 3, padding=1).requires_grad_(False)
        self.branch_head = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        return super().forward(x, labels) + self.branch_head(self.branch(x).mean(dim=(2, 3))).flatten()


if "test_frozen_branch" not in DISCRIMINATORS:
    DISCRIMINATORS.register("test_frozen_branch", args=_FrozenBranchArgs)(FrozenBranchD)


def test_frozen_parameters_never_reach_an_optimiser_and_stay_frozen(tiny_config, tmp_path):
    from breastgan.config import load_config
    from breastgan.distributed import init_distributed
    from breastgan.training.trainer import Trainer

    tiny_config["model"]["discriminator"]["arch"] = "test_frozen_branch"
    tr = Trainer(load_config(tiny_config, ["train.max_steps=3"]), tmp_path / "f", init_distributed("cpu"))
    D = tr.env.module("discriminator")
    frozen = {id(p) for p in D.branch.parameters()}
    in_opt = {id(p) for g in tr.env.optimizers["discriminator"].param_groups for p in g["params"]}
    assert not frozen & in_opt and id(D.branch_head.weight) in in_opt
    before = D.branch.weight.detach().clone()
    tr.fit()
    assert torch.equal(D.branch.weight, before) and not D.branch.weight.requires_grad  # frozen after the G steps' toggling
    assert D.branch_head.weight.requires_grad


# -- progress lines ------------------------------------------------------------------------------------------
def test_batch_jobs_get_one_plain_progress_line_per_log_interval(tiny_config, tmp_path):
    cfg = tmp_path / "c.yaml"
    tiny_config["train"].update(max_steps=6, log_every=2, progress=True)  # progress bar asked for, but no terminal
    cfg.write_text(yaml.safe_dump(tiny_config))
    proc = subprocess.run([sys.executable, "-m", "breastgan", "train", "--config", str(cfg), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if " step " in x and "img/s" in x]
    assert len(lines) == 3, proc.stderr
    assert "step 6/6 (100%)" in lines[-1] and "ETA" in lines[-1] and "loss_d" in lines[-1] and "loss_g" in lines[-1]
    assert all(len(x) > 60 for x in lines)  # one line each, not wrapped at the terminal width
    logged = [x for x in (tmp_path / "r" / "logs" / "train.log").read_text().splitlines() if "img/s" in x]
    assert len(logged) == 3


# -- models ---------------------------------------------------------------------------------------------------
def test_models_lists_recipes_terms_and_metrics():
    from typer.testing import CliRunner

    from breastgan.cli import _register_all, app

    _register_all()
    out = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    for name in ("recipes", "gan", "loss terms", "gradient_penalty", "aux_classification", "metrics", "kid", "swd", "ms-ssim", "pixel_stats"):
        assert name in out.output, name


# -- runs made by breastgan 0.1 ---------------------------------------------------------------------------------
def test_a_run_made_before_the_redesign_resumes(tmp_path):
    run = tmp_path / "run_v1"
    shutil.copytree(LEGACY / "run_v1", run)
    result = breastgan.train(resume=run, overrides=["train.max_steps=10"])
    assert result.step == 10
    meta = json.loads((run / "checkpoints" / "step_00000010" / "meta.json").read_text())
    assert meta["modules"] == ["generator", "discriminator"] and meta["iteration"] == 10
    assert breastgan.load_generator(run).sample(2, seed=0).shape == (2, 1, 32, 32)
