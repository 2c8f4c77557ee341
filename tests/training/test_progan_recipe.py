"""The progan recipe: schedule, fade-in of the real images, a tiny run through three stages (10x8 -> 40x32)
on the two-view phantom, exact resume mid-fade, and view conditioning with the auxiliary head."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import breastgan
from breastgan.config import ConfigError, load_config
from breastgan.models.progan import ProGANDiscriminator
from breastgan.training.recipes.progan import Schedule, steps_for_schedule

MODULES = ("generator", "discriminator", "generator_ema")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny networks: intra-op threads only add synchronisation, and on a shared 2-core machine
    # a second spinning thread makes a step 10-60x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**train) -> dict:
    cfg = {
        "name": "pg",
        "recipe": {"name": "progan", "start_stage": 1, "train_kimg": 0.016, "fade_kimg": 0.016, "batch_sizes": [8, 8, 8, 4],
                   "d_iters": [1, 2], "d_iters_ramp_kimg": [0.0, 0.064]},
        "data": {"source": {"dataset": "phantom_full", "n": 32, "size": [40, 32]}, "conditional": True, "hflip": False, "vflip": False},
        "model": {"generator": {"arch": "progan", "widths": [8, 8, 6, 4], "latent_dim": 8},
                  "discriminator": {"arch": "progan", "widths": [8, 8, 6, 4], "aux_classifier": True}},
        "loss": {"name": "wgan-gp", "gp_lambda": 10, "gp_target": 1, "drift": 0.001,
                 "terms": [{"term": "aux_classification", "weight": 1, "phase": "discriminator"},
                           {"term": "aux_classification", "weight": 1, "phase": "generator"}]},
        "optim": {"lr_g": 0.0015, "lr_d": 0.0015, "betas": [0.0, 0.99]},
        "train": {"max_steps": 12, "log_every": 1, "checkpoint_every": 1, "keep_last": 100, "sample_every": 1000, "grid_size": 4,
                  "progress": False, "device": "cpu", "ema": {"decay": 0.999}, **train},
    }
    return cfg


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    return {f"{m}.{k}": v for m in MODULES for k, v in load_file(str(d / f"{m}.safetensors")).items()}


def meta(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "meta.json").read_text())


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


class _Env:
    device = torch.device("cpu")


def build_recipe(tree: dict):
    from breastgan.training.recipes.progan import ProGANRecipe

    cfg = load_config(tree)
    return ProGANRecipe(cfg, cfg.recipe.validated_args(), _Env())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("progan")
    return breastgan.train(tiny_config(), run_dir=root / "full").run_dir


def test_schedule_closed_form():
    s = Schedule(start=1, stages=4, train_kimg=0.016, fade_kimg=[0.0, 0.0, 0.010, 0.020])
    assert s.locate(0) == (1, "stable", 1.0) and s.locate(15) == (1, "stable", 1.0)
    assert s.locate(16) == (2, "fade", 0.0) and s.locate(21) == (2, "fade", 0.5)
    assert s.locate(26) == (2, "stable", 1.0)
    assert s.locate(42) == (3, "fade", 0.0) and s.locate(47) == (3, "fade", 0.25)
    assert s.locate(62) == (3, "stable", 1.0) and s.locate(10**9) == (3, "stable", 1.0)
    assert s.images_to_final() == 16 + 10 + 16 + 20
    # batches of 8 until stage 3 (0 -> 48 images: 6 steps, the last crossing into stage 3's fade), then of 4 (48 -> 64: 4)
    assert steps_for_schedule(s, [8, 8, 8, 4], world_size=1) == 6 + 4
    assert steps_for_schedule(s, [4], world_size=2) == 64 // 8  # a global batch of 8 throughout


def test_real_images_fade_in_with_the_same_alpha(tmp_path):
    r = build_recipe(tiny_config())
    x = torch.rand(3, 1, 40, 32, dtype=torch.float64)
    r.set_structure({"stage": 2, "phase": "fade"})
    x20 = F.avg_pool2d(x, 2)
    assert torch.equal(r.real_at_stage(x, 0.0), F.interpolate(F.avg_pool2d(x20, 2), scale_factor=2, mode="nearest"))
    assert torch.equal(r.real_at_stage(x, 1.0), x20)
    r.set_structure({"stage": 2, "phase": "stable"})
    assert torch.equal(r.real_at_stage(x, 1.0), x20)


def test_tiny_run_grows_through_three_stages_with_fresh_optimisers(full_run):
    structures = {s: meta(full_run, s)["structure"] for s in range(1, 13)}
    stages = {v["stage"] for v in structures.values()}
    assert stages == {1, 2, 3}, structures
    assert {"fade", "stable"} <= {v["phase"] for v in structures.values()}
    last = meta(full_run, 12)
    assert last["model"]["components"]["generator"]["args"]["stage"] == 3 and last["model"]["output"]["image_size"] == [40, 32]
    assert last["effective_batch"] == 4 and meta(full_run, 1)["effective_batch"] == 8  # per-stage batch sizes
    assert meta(full_run, 1)["model"]["output"]["image_size"] == [10, 8]
    w = weights(full_run, 12)
    assert "generator.to_image.3.weight" in w and "generator.to_image.1.weight" not in w
    # Adam restarts at each level-of-detail change: the step count of a fresh optimiser is the steps since the change
    state = torch.load(full_run / "checkpoints" / "step_00000012" / "training_state.pt", weights_only=True)
    first_of_structure = min(s for s, v in structures.items() if v == structures[12])
    g_steps = next(iter(state["optimizers"]["generator"]["state"].values()))["step"]
    assert int(g_steps) == 12 - first_of_structure  # built after step first_of_structure, updated by the steps after it
    log = records(full_run)
    assert {"stage", "alpha", "kimg", "d_iters", "gp", "drift", "aux_ce_real", "aux_ce_fake", "aux_cls_g"} <= set(log[-1])
    assert max(r["d_iters"] for r in log) == 2 and min(r["d_iters"] for r in log) == 1  # the ramp
    alphas = [r["alpha"] for r in log]
    assert any(0 < a < 1 for a in alphas)
    # any checkpoint regenerates at its own stage, mid-fade with its alpha (a buffer saved with the weights)
    for step, size in ((1, (10, 8)), (12, (40, 32))):
        gen = breastgan.load_generator(full_run / "checkpoints" / f"step_{step:08d}")
        assert gen.sample(2, seed=0, labels="MLO").shape == (2, 1, *size)
    sched = Schedule(1, 4, 0.016, 0.016)
    for step in (s for s in range(1, 13) if structures[s]["phase"] == "fade"):
        nimg = torch.load(full_run / "checkpoints" / f"step_{step:08d}" / "training_state.pt", weights_only=True)["recipe"]["nimg"]
        st = structures[step]["stage"]
        for m in ("generator", "generator_ema", "discriminator"):  # also the first checkpoint after a change
            saved = load_file(str(full_run / "checkpoints" / f"step_{step:08d}" / f"{m}.safetensors"))[f"alpha_{st}"]
            assert float(saved) == pytest.approx(sched.locate(int(nimg))[2], abs=1e-7), (step, m)
        assert breastgan.load_generator(full_run / "checkpoints" / f"step_{step:08d}").models[0].alpha.item() == float(saved)
    assert not [k for k in weights(full_run, 12) if "alpha" in k]  # stable phase: no blend
    summary = json.loads((full_run / "summary.json").read_text())["progan"]
    assert summary["stage"] == 3 and summary["resolution"] == [40, 32]
    assert summary["kimg"] * 1000 == state["recipe"]["nimg"]


def test_resume_mid_fade_equals_the_uninterrupted_run(full_run, tmp_path):
    sched = Schedule(1, 4, 0.016, 0.016)

    def where(step):
        state = torch.load(full_run / "checkpoints" / f"step_{step:08d}" / "training_state.pt", weights_only=True)
        return sched.locate(int(state["recipe"]["nimg"]))

    fading = [s for s in range(1, 12) if meta(full_run, s)["structure"] == {"stage": 3, "phase": "fade"} and 0 < where(s)[2] < 1]
    assert fading, "no checkpoint inside the last fade-in"
    stop = fading[0]  # really mid-fade: 0 < alpha < 1 at the stop
    part = breastgan.train(tiny_config(max_steps=stop), run_dir=tmp_path / "part").run_dir
    breastgan.train(resume=part, overrides=["train.max_steps=12"])
    a, b = weights(full_run, 12), weights(part, 12)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_configuration_errors_name_the_key():
    cfg = tiny_config()
    bad = copy.deepcopy(cfg)
    bad["model"]["generator"]["stage"] = 2
    with pytest.raises(ConfigError, match="model.generator.stage: set by the recipe"):
        build_recipe(bad)
    bad = copy.deepcopy(cfg)
    bad["data"]["source"]["size"] = [40, 30]
    with pytest.raises(ConfigError, match=r"is not base_size \(5, 4\) x 2\*\*k"):
        build_recipe(bad)
    bad = copy.deepcopy(cfg)
    bad["recipe"]["start_stage"] = 4
    with pytest.raises(ConfigError, match="recipe.start_stage: 4 is beyond the last stage 3"):
        build_recipe(bad)


@pytest.fixture(scope="module")
def view_run(tmp_path_factory) -> Path:
    """The auxiliary view head on the two-view phantom, one 20x16 stage (growth is tested above)."""
    cfg = tiny_config(max_steps=200, checkpoint_every=1000, log_every=10)
    cfg["data"]["source"].update(n=64, size=[20, 16])
    cfg["recipe"].update(start_stage=2, batch_sizes=[16], d_iters=[1, 1])
    cfg["optim"].update(lr_g=0.003, lr_d=0.003)
    cfg["model"]["generator"]["widths"] = cfg["model"]["discriminator"]["widths"] = [16, 16, 8]
    cfg["train"]["ema"] = {"decay": 0.9}
    return breastgan.train(cfg, run_dir=tmp_path_factory.mktemp("view") / "r").run_dir


def test_view_head_learns_and_generate_label_gives_that_view(view_run, tmp_path):
    log = [r for r in records(view_run) if "aux_ce_real" in r]
    first, last = log[0]["aux_ce_real"], sum(r["aux_ce_real"] for r in log[-3:]) / 3
    assert last < 0.5 * first, (first, last)  # the classification loss on reals falls

    gen = breastgan.load_generator(view_run, ema=False)
    ckpt = sorted((view_run / "checkpoints").glob("step_*"))[-1]
    d_args = json.loads((view_run / "run.json").read_text())["modules"]["discriminator"]["args"]
    assert d_args["stage"] == 2 and d_args["aux_classifier"] is True
    d = ProGANDiscriminator(**d_args)
    d.load_state_dict(load_file(str(ckpt / "discriminator.safetensors")))
    d.eval()
    for label, index in (("CC", 0), ("MLO", 1)):
        x = gen.sample(32, seed=3, labels=label)
        assert x.shape == (32, 1, 20, 16)
        with torch.no_grad():
            _, logits = d(x * 2 - 1, return_aux=True)
        assert (logits.argmax(1) == index).float().mean() >= 0.8, (label, logits.argmax(1))
