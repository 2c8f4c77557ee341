import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import breastgan
from breastgan.losses import LOSSES
from breastgan.losses.adversarial import NonSaturatingLoss
from breastgan.training.checkpoint import NonFiniteError


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    d = run / "checkpoints" / f"step_{step:08d}"
    out = {}
    for name in ("generator", "generator_ema", "discriminator"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(d / f"{name}.safetensors")).items()})
    return out


def test_run_directory_layout(tiny_config, tmp_path):
    run = tmp_path / "run"
    result = breastgan.train(tiny_config, run_dir=run)
    assert result.step == 12
    for f in ("config.yaml", "run.json", "model.json", "summary.json", "logs/metrics.jsonl", "logs/train.log"):
        assert (run / f).is_file(), f
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]
    assert (run / "samples" / "step_00000012.png").is_file()
    assert any((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "D(x)", "D(G(z))", "images_per_s"} <= set(records[-1])
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0 and info["sessions"][0]["versions"]["torch"] == torch.__version__
    assert info["sessions"][0]["effective_batch"] == 16
    # training state loads without unpickling arbitrary objects
    state = torch.load(run / "checkpoints" / "step_00000012" / "training_state.pt", weights_only=True)
    assert state["loop"]["step"] == 12 and set(state["optimizers"]) == {"generator", "discriminator"}
    meta = json.loads((run / "checkpoints" / "step_00000012" / "meta.json").read_text())
    assert meta["modules"] == ["generator", "discriminator"] and meta["ema_modules"] == ["generator"] and meta["recipe"] == "gan"
    model = json.loads((run / "model.json").read_text())
    assert model["kind"] == "noise" and model["components"]["generator"]["module"] == "generator"


def test_same_seed_same_weights(tiny_config, tmp_path):
    a = breastgan.train(tiny_config, run_dir=tmp_path / "a")
    b = breastgan.train(tiny_config, run_dir=tmp_path / "b")
    wa, wb = _weights(a.run_dir, 12), _weights(b.run_dir, 12)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _cli(args, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "breastgan", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_resume_after_kill_gives_identical_weights(tiny_config, tmp_path):
    tiny_config["train"].update({"max_steps": 40, "checkpoint_every": 8, "sample_every": 100, "keep_last": 10})
    tiny_config["train"]["augment"] = {"policy": "diffaugment", "ops": ["color", "translation", "cutout"]}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    full = _cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "full")])
    assert full.wait(timeout=300) == 0, full.stdout.read().decode()

    killed = _cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "killed")])
    marker = tmp_path / "killed" / "checkpoints" / "step_00000016" / "meta.json"
    deadline = time.time() + 240
    while not marker.exists():
        assert killed.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step_*"))
    assert "step_00000040" not in ckpts  # it really was interrupted

    resumed = _cli(["train", "--resume", str(tmp_path / "killed")])
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out
    wa, wb = _weights(tmp_path / "full", 40), _weights(tmp_path / "killed", 40)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["sessions"][-1]["resumed"] is True


def test_resume_rejects_changes_to_the_recipe(tiny_config, tmp_path):
    breastgan.train(tiny_config, run_dir=tmp_path / "r")
    with pytest.raises(breastgan.config.ConfigError if hasattr(breastgan, "config") else Exception, match="cannot change"):
        breastgan.train(resume=tmp_path / "r", overrides=["optim.lr_g=0.1"])
    more = breastgan.train(resume=tmp_path / "r", overrides=["train.max_steps=18"])
    assert more.step == 18


class _NaNAfter(NonSaturatingLoss):
    """Test loss: non-finite discriminator loss on chosen calls."""

    calls = 0
    bad_calls: set[int] = set()

    def discriminator_loss(self, real, fake, real_targets=None):
        type(self).calls += 1
        loss = super().discriminator_loss(real, fake, real_targets)
        return loss * float("nan") if type(self).calls in type(self).bad_calls else loss


if "test_nan_after" not in LOSSES:
    LOSSES.register("test_nan_after")(_NaNAfter)


def test_nonfinite_loss_stops_with_clear_message(tiny_config, tmp_path):
    _NaNAfter.calls, _NaNAfter.bad_calls = 0, {9}
    tiny_config["loss"] = {"name": "test_nan_after"}
    with pytest.raises(NonFiniteError, match=r"discriminator loss is nan at step 8 .*Training stopped"):
        breastgan.train(tiny_config, run_dir=tmp_path / "nan")
    # the checkpoint at step 6 exists and is finite; nothing later was written
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("step_*")) == ["step_00000006"]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "nan", 6).values() if v.is_floating_point())


def test_nonfinite_rollback_recovers(tiny_config, tmp_path):
    _NaNAfter.calls, _NaNAfter.bad_calls = 0, {9}
    tiny_config["loss"] = {"name": "test_nan_after"}
    tiny_config["train"]["nonfinite"] = "rollback"
    result = breastgan.train(tiny_config, run_dir=tmp_path / "rb")
    assert result.step == 12 and result.summary["rollbacks"] == 1


def test_snapshots_every_k_epochs(tiny_config, tmp_path):
    tiny_config["train"].update({"max_steps": None, "epochs": 4, "snapshot_every_epochs": 2, "snapshot_start_epoch": 2})
    result = breastgan.train(tiny_config, run_dir=tmp_path / "s")
    snaps = sorted(p.name for p in (result.run_dir / "snapshots").iterdir())
    assert snaps == ["epoch_000002.safetensors", "epoch_000004.safetensors"]
    assert result.step == 4 * (256 // 16)


def test_best_checkpoint_is_kept(tiny_config, tmp_path):
    tiny_config["train"].update({"max_steps": 24, "keep_last": 1, "eval": [{"metric": "pixel_stats", "every": 6, "n": 32}], "best_metric": "pixel_stats/hist_w1"})
    result = breastgan.train(tiny_config, run_dir=tmp_path / "b")
    best = json.loads((result.run_dir / "checkpoints" / "best.json").read_text())
    kept = sorted(int(p.name[5:]) for p in (result.run_dir / "checkpoints").glob("step_*"))
    assert best["step"] in kept and 24 in kept
    records = [json.loads(x) for x in (result.run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    values = {r["step"]: r["pixel_stats/hist_w1"] for r in records if "pixel_stats/hist_w1" in r}
    assert best["value"] == pytest.approx(min(values.values()))


def test_conditional_training_and_sampling(tiny_config, tmp_path):
    tiny_config["data"]["conditional"] = True
    tiny_config["loss"] = {"name": "hinge"}
    result = breastgan.train(tiny_config, run_dir=tmp_path / "c")
    gen = breastgan.load_generator(result.run_dir)
    assert gen.class_names == ["healthy", "lesion"]
    a = gen.sample(4, seed=1, labels="healthy")
    b = gen.sample(4, seed=1, labels="lesion")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown label 'tumour'"):
        gen.sample(2, labels="tumour")


def test_training_moves_samples_toward_real_distribution(tmp_path):
    """Integration: a few hundred steps of a tiny DCGAN on phantom patches measurably improve
    distribution statistics of the samples over the untrained generator."""
    from breastgan.data import build_dataset
    from breastgan.evaluation.pixel_stats import pixel_statistics_distance

    cfg = {
        "data": {"source": {"dataset": "phantom", "n": 1024, "size": 32, "seed": 1}},
        "model": {"generator": {"arch": "dcgan", "base_width": 16}, "discriminator": {"arch": "dcgan", "base_width": 16}},
        "loss": {"name": "nonsaturating"},
        "train": {"batch_size": 32, "max_steps": 300, "checkpoint_every": 300, "sample_every": 300, "progress": False, "ema": {"decay": 0.99}},
    }
    result = breastgan.train(cfg, run_dir=tmp_path / "it")
    real = build_dataset("phantom", {"n": 512, "size": 32, "seed": 99}).images
    trained = breastgan.load_generator(result.run_dir).sample(512, seed=5)
    # untrained: same architecture and init (same seed), zero steps
    cfg["train"]["max_steps"] = 1
    cfg["optim"] = {"lr_g": 1e-12, "lr_d": 1e-12}
    cfg["train"]["ema"] = {"decay": 0.0}
    untrained = breastgan.load_generator(breastgan.train(cfg, run_dir=tmp_path / "u").run_dir).sample(512, seed=5)
    before = pixel_statistics_distance(real, untrained)
    after = pixel_statistics_distance(real, trained)
    assert after["hist_w1"] < 0.5 * before["hist_w1"], (before, after)
    assert after["spectrum_l1"] < 0.5 * before["spectrum_l1"], (before, after)
