"""The progan recipe under torchrun: 2 gloo ranks x b equal 1 rank x 2b across stage changes (DDP re-wrapped
at every level of detail, per-stage batch sizes, the D-iteration ramp and a resume mid-fade with another world size)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import read_json, run, single_cmd, torchrun_cmd

MODULES = ("generator", "discriminator", "generator_ema")


def progan_config(path: Path, *, scale: int, max_steps: int = 10) -> Path:
    """``scale``: per-process batches are [8, 8, 4] x scale, so 2 processes at scale 1 equal 1 at scale 2.

    Per-process batches are multiples of the minibatch-stddev group (4): the statistic is computed per
    process (as in the reference's multi-GPU training), so only whole groups make world sizes agree.
    """
    cfg = {
        "name": "pg2",
        "recipe": {"name": "progan", "start_stage": 1, "train_kimg": 0.032, "fade_kimg": 0.032, "batch_sizes": [8 * scale, 8 * scale, 4 * scale],
                   "d_iters": [1, 2], "d_iters_ramp_kimg": [0.0, 0.08]},
        "data": {"source": {"dataset": "phantom_full", "n": 32, "size": [20, 16]}, "conditional": True, "hflip": False, "vflip": False},
        "model": {"generator": {"arch": "progan", "widths": [8, 6, 4], "latent_dim": 8},
                  "discriminator": {"arch": "progan", "widths": [8, 6, 4], "aux_classifier": True}},
        "loss": {"name": "wgan-gp", "gp_lambda": 10, "drift": 0.001,
                 "terms": [{"term": "aux_classification", "weight": 1, "phase": "discriminator"},
                           {"term": "aux_classification", "weight": 1, "phase": "generator"}]},
        "optim": {"lr_g": 0.0015, "lr_d": 0.0015, "betas": [0.0, 0.99]},
        "train": {"max_steps": max_steps, "log_every": 1, "checkpoint_every": 1, "keep_last": 100, "sample_every": 1000, "grid_size": 4,
                  "progress": False, "device": "cpu", "ema": {"decay": 0.5}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    return {f"{m}.{k}": v for m in MODULES for k, v in load_file(str(d / f"{m}.safetensors")).items()}


def assert_close(a: dict, b: dict) -> None:
    """Equal up to rounding. Same data and draws; the all-reduce sums gradients in another order, and Adam
    (each update ~lr whatever the gradient's size) on unit-scale equalised-lr weights turns last-bit
    differences into ~1e-5..1e-4 after a few steps. A real mismatch (other data, another minibatch-stddev
    group, a wrong alpha) flips update signs: differences of 2 x lr = 3e-3 in many weights."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-4, rtol=0, msg=k)


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_double_batch_across_stage_changes(tmp_path):
    run(single_cmd("train", "--config", str(progan_config(tmp_path / "one.yaml", scale=2)), "--run-dir", str(tmp_path / "one")), timeout=120)
    run(torchrun_cmd(2, "train", "--config", str(progan_config(tmp_path / "two.yaml", scale=1)), "--run-dir", str(tmp_path / "two")), timeout=180)
    structures = [read_json(tmp_path / "two" / "checkpoints" / f"step_{s:08d}" / "meta.json")["structure"] for s in range(1, 11)]
    assert {s["stage"] for s in structures} == {1, 2} and {s["phase"] for s in structures} == {"fade", "stable"}
    for s in range(1, 11):
        m1 = read_json(tmp_path / "one" / "checkpoints" / f"step_{s:08d}" / "meta.json")
        m2 = read_json(tmp_path / "two" / "checkpoints" / f"step_{s:08d}" / "meta.json")
        assert m1["structure"] == m2["structure"] and m1["effective_batch"] == m2["effective_batch"]
    assert_close(weights(tmp_path / "one", 10), weights(tmp_path / "two", 10))

    # stop the 2-rank run mid-fade and continue it on 1 process (same config: the effective batch halves);
    # stage, phase and alpha follow the images shown, counted at the global batch before and after
    fade = next(s for s in range(1, 10) if structures[s - 1] == {"stage": 2, "phase": "fade"})
    part = tmp_path / "part"
    run(torchrun_cmd(2, "train", "--config", str(progan_config(tmp_path / "part.yaml", scale=1, max_steps=fade)), "--run-dir", str(part)), timeout=180)
    assert_close(weights(tmp_path / "two", fade), weights(part, fade))
    run(single_cmd("train", "--resume", str(part), "--set", "train.max_steps=10"), timeout=120)
    from breastgan.training.recipes.progan import Schedule

    sched = Schedule(1, 3, 0.032, 0.032)
    nimg = [torch.load(part / "checkpoints" / f"step_{s:08d}" / "training_state.pt", weights_only=True)["recipe"]["nimg"] for s in range(fade, 11)]
    for s, n in zip(range(fade, 11), nimg):
        st, phase, _ = sched.locate(int(n))
        assert read_json(part / "checkpoints" / f"step_{s:08d}" / "meta.json")["structure"] == {"stage": st, "phase": phase}
    steps_after = [b - a for a, b in zip(nimg, nimg[1:])]
    assert set(steps_after) <= {4, 8}  # 1 process x 4 images per D update (1 or 2 D updates per step) after the resume
