"""The dm-GAN recipe end to end on one machine: G1 fit, N discriminators on shards, resume, generate, export gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from breastgan.cli import app, _register_all
from breastgan.generation import LoadedGenerator, load_generator
from breastgan.training.trainer import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny DCGAN on 32x32 phantom images: G1's pretrained generator."""
    run = tmp_path_factory.mktemp("g1") / "run"
    cfg = {"name": "g1", "data": {"source": {"dataset": "phantom", "n": 64, "size": 32, "seed": 3}},
           "model": {"generator": {"arch": "dcgan", "base_width": 8, "max_width": 32, "latent_dim": 16},
                     "discriminator": {"arch": "dcgan", "base_width": 8}},
           "train": {"batch_size": 16, "max_steps": 4, "log_every": 2, "sample_every": 100, "checkpoint_every": 4, "progress": False}}
    train(cfg, run_dir=run)
    return run


def dmgan_config(g1: Path, **recipe) -> dict:
    return {
        "name": "dm", "data": {"source": {"dataset": "phantom", "n": 24, "size": 32, "seed": 5}},
        "recipe": {"name": "dmgan", "g1": {"generator": str(g1), "layer": 2, "n_codes": 3,
                                           "fit": {"steps": 4, "optimizer": "adam", "lr": 0.05, "batch_size": 8}},
                   "n_discriminators": 3, **recipe},
        "model": {"generator": {"arch": "resnet_generator", "ngf": 8, "n_blocks": 1, "dropout": 0.5},
                  "discriminator": {"arch": "patchgan", "ndf": 8, "n_layers": 2}},
        "train": {"batch_size": 2, "max_steps": 4, "log_every": 1, "sample_every": 100, "checkpoint_every": 2, "progress": False,
                  "grid_size": 4},
    }


def weights(run: Path, step: int, module: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / f"{module}.safetensors"))


def test_train_fit_shards_and_generate(pretrained, tmp_path):
    run = tmp_path / "dm"
    res = train(dmgan_config(pretrained), run_dir=run)
    assert res.step == 4
    summary = json.loads((run / "summary.json").read_text())["dmgan"]
    assert summary["g1_input"] == "inverted"
    assert sorted(sum([[len(s)] for s in [range(n) for n in summary["shards"]["sizes"]]], [])) and sum(summary["shards"]["sizes"]) == 24
    assert abs(sum(summary["shards"]["pi"]) - 1) < 1e-9
    assert summary["g1_fit"]["images"] == 24 and summary["g1_fit"]["psnr_db_mean"] > 0
    # the fitted codes are checkpointed (patient data) but are not part of what the run generates with
    ckpt = weights(run, 4, "codes")
    assert ckpt["codes"].shape == (24, 3, 16) and int(ckpt["fitted"]) == 1
    model = json.loads((run / "model.json").read_text())
    assert list(model["components"]) == ["generator"] and model["components"]["generator"]["arch"] == "dmgan"
    gen = load_generator(run)
    assert isinstance(gen, LoadedGenerator)
    a, b = gen.sample(4, seed=1), gen.sample(4, seed=1)
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    # the pretrained renderer stayed frozen: G1's weights equal the DCGAN's
    g1 = load_file(str(pretrained / "checkpoints" / "step_00000004" / "generator_ema.safetensors"))
    g = weights(run, 4, "generator")
    assert all(torch.equal(g[f"g1.generator.{k}"], v) for k, v in g1.items() if f"g1.generator.{k}" in g)


def test_resume_is_exact_and_does_not_refit(pretrained, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(dmgan_config(pretrained), run_dir=whole)
    train(dmgan_config(pretrained), overrides=["train.max_steps=2"], run_dir=part)
    train(resume=part, overrides=["train.max_steps=4"])
    for module in ("generator", "discriminators", "codes"):
        a, b = weights(whole, 4, module), weights(part, 4, module)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), module


def test_cli_generate_and_export_refuses_patient_code_sets(pretrained, tmp_path):
    _register_all()
    runner = CliRunner()
    run = tmp_path / "interp"
    train(dmgan_config(pretrained, sampling="interpolate"), overrides=["train.max_steps=2"], run_dir=run)
    out = runner.invoke(app, ["generate", "--run", str(run), "-n", "3", "--out", str(tmp_path / "imgs")])
    assert out.exit_code == 0, out.output
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 3
    out = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "pkg")])
    assert out.exit_code != 0 and "code_bank" in out.output and "individual training images" in out.output
    assert not (tmp_path / "pkg").exists()


def test_config_errors_name_the_field(pretrained, tmp_path):
    from breastgan.config import ConfigError

    cfg = dmgan_config(pretrained)
    cfg["model"]["generator"] = {"arch": "unet"}
    with pytest.raises(ConfigError, match="model.generator.arch"):
        train(cfg, run_dir=tmp_path / "a")
    cfg = dmgan_config(pretrained)
    cfg["train"]["batch_size"] = 50
    with pytest.raises(ConfigError, match="smallest shard"):
        train(cfg, run_dir=tmp_path / "b")
    cfg = dmgan_config(tmp_path / "missing")
    with pytest.raises(ConfigError, match="recipe.g1.generator"):
        train(cfg, run_dir=tmp_path / "c")


def test_sampled_input_on_one_machine_fits_no_codes(pretrained, tmp_path):
    run = tmp_path / "sampled"
    train(dmgan_config(pretrained, g1_input="sampled"), overrides=["train.max_steps=2"], run_dir=run)
    meta = json.loads((run / "checkpoints" / "step_00000002" / "meta.json").read_text())
    assert sorted(meta["modules"]) == ["discriminators", "generator"]
    assert json.loads((run / "summary.json").read_text())["dmgan"]["g1_input"] == "sampled"
    assert load_generator(run).sample(2, seed=0).shape == (2, 1, 32, 32)


def test_sampled_input_takes_an_alpha_prior_from_an_invert_output(pretrained, tmp_path):
    from safetensors.torch import save_file

    from breastgan.config import ConfigError

    G = load_generator(pretrained).models[0]
    from breastgan.models.multicode import MultiCodeGenerator

    c_l = MultiCodeGenerator(G, 2, 3).feature_channels
    alphas = torch.rand(5, 3, c_l) + 0.5
    (tmp_path / "inv").mkdir()
    save_file({"codes": torch.zeros(5, 3, 16), "alphas": alphas}, str(tmp_path / "inv" / "codes.safetensors"))
    run = tmp_path / "prior"
    train(dmgan_config(pretrained, g1_input="sampled", alpha_prior=str(tmp_path / "inv")), overrides=["train.max_steps=1"], run_dir=run)
    g = weights(run, 1, "generator")
    assert torch.allclose(g["alpha_mean"], alphas.mean(0)) and torch.allclose(g["alpha_std"], alphas.std(0))
    save_file({"alphas": torch.rand(5, 4, c_l)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="bad.safetensors: expected finite 'alphas'"):
        train(dmgan_config(pretrained, g1_input="sampled", alpha_prior=str(tmp_path / "bad.safetensors")), run_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="alpha_prior is for g1_input 'sampled'"):
        train(dmgan_config(pretrained, alpha_prior=str(tmp_path / "inv")), run_dir=tmp_path / "y")
