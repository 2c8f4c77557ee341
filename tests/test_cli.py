import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from breastgan.cli import _register_all, app

_register_all()
runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["train"], ["generate"], ["models"]])
def test_help_is_useful(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_models_lists_architectures_and_losses():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("dcgan", "wgan_gp_critic", "nonsaturating", "minimax", "lsgan", "hinge", "wgan-gp", "phantom", "kernel_size"):
        assert name in result.output


def test_train_then_generate(tiny_config, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(cfg), "--set", "train.max_steps=4", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4
    out = tmp_path / "imgs"
    result = runner.invoke(app, ["generate", "--run", str(run), "-n", "10", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["count"] == 10
    assert len(list(out.glob("img_*.png"))) == 10


def test_config_error_is_one_clear_message(tiny_config, tmp_path):
    tiny_config["train"]["lr"] = 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    proc = subprocess.run([sys.executable, "-m", "breastgan", "train", "--config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lr: unknown key" in proc.stderr and "Traceback" not in proc.stderr
