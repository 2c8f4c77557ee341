"""The ``utility_classifier`` backbone: a breastgan utility classifier's embedding as the frozen DGAN-WP-TL branch."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from breastgan.models import DISCRIMINATORS
from breastgan.models.backbones import UtilityClassifierBranch, build_backbone
from breastgan.utility.classifiers import CLASSIFIERS, build_cnn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # critic_steps.py: the frozen-branch training helper
from critic_steps import train_critic  # noqa: E402

TINY_CNN = {"channels": [4, 8, 8, 8], "hidden": 16}


def _save_as_fit_does(model: torch.nn.Module, path):
    # fit's own line: detached, on the CPU, contiguous
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _trained_looking_cnn(seed: int = 0, **args) -> torch.nn.Module:
    """A study CNN whose batch-norm statistics are not the defaults, so a wrong cut or an unloaded buffer shows."""
    torch.manual_seed(seed)
    cnn = build_cnn(num_classes=2, image_size=64, **args)
    cnn.train()
    with torch.no_grad():
        for _ in range(3):
            cnn(torch.rand(8, 1, 64, 64))
    return cnn.eval()


def _reference_embedding(cnn: torch.nn.Module, x01: torch.Tensor) -> torch.Tensor:
    """Independent of backbones.py: the input of the classifier's last linear layer, captured by a hook on fc2."""
    seen = {}
    handle = cnn.fc2.register_forward_hook(lambda mod, inp, out: seen.setdefault("h", inp[0]))
    with torch.no_grad():
        cnn(x01)  # eval mode: dropout is the identity, so fc2's input is the FC1 + BN + ReLU embedding
    handle.remove()
    return seen["h"]


def test_features_are_the_classifiers_penultimate_embedding(tmp_path):
    cnn = _trained_looking_cnn()
    path = _save_as_fit_does(cnn, tmp_path / "best.safetensors")
    b = build_backbone({"name": "utility_classifier", "weights": str(path), "classifier": "cnn", "image_size": 64})
    assert isinstance(b, UtilityClassifierBranch) and b.channels == (128,) and b.reductions == (1,)
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        out = b(x)[0]
    assert out.shape == (3, 128, 1, 1)
    torch.testing.assert_close(out.flatten(1), _reference_embedding(cnn, (x + 1) / 2))  # [-1, 1] -> the classifier's [0, 1]
    # the folder holding best.safetensors works the same, and the sha256 is the file's
    b2 = build_backbone({"name": "utility_classifier", "weights": str(tmp_path), "classifier": "cnn", "image_size": 64})
    d = b2.describe()
    assert d["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and d["classifier"] == "cnn" and d["image_size"] == 64
    with torch.no_grad():
        torch.testing.assert_close(b2(x)[0], out)


def test_a_different_gan_size_is_area_resized_to_the_classifiers(tmp_path):
    cnn = _trained_looking_cnn()
    path = _save_as_fit_does(cnn, tmp_path / "best.safetensors")
    b = build_backbone({"name": "utility_classifier", "weights": str(path), "classifier": "cnn", "image_size": 64})
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    # area resize of 128 -> 64 is a 2x2 mean: computed here by reshaping, not by interpolate
    x01 = ((x + 1) / 2).reshape(2, 1, 64, 2, 64, 2).mean((3, 5))
    with torch.no_grad():
        torch.testing.assert_close(b(x)[0].flatten(1), _reference_embedding(cnn, x01))


def test_frozen_in_dgan_wp_tl_steps_and_input_gradient(tmp_path):
    cnn = _trained_looking_cnn(**TINY_CNN)
    path = _save_as_fit_does(cnn, tmp_path / "best.safetensors")
    spec = {"name": "utility_classifier", "weights": str(path), "classifier": "cnn", "classifier_args": TINY_CNN, "image_size": 64}
    torch.manual_seed(0)
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": 64, "backbone": spec, "widths": [8, 16]})
    assert isinstance(D.branch, UtilityClassifierBranch)
    before = {k: v.clone() for k, v in D.branch.state_dict().items()}
    D.train()  # the loop does this: the branch (its batch norms) must stay in eval mode
    assert not D.branch.training and all(not m.training for m in D.branch.modules()) and D.custom.training
    assert all(not p.requires_grad for p in D.branch.parameters())
    real, fake = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    loss = train_critic(D, real, fake, 3)
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in D.branch.parameters())
    assert all(torch.equal(before[k], v) for k, v in D.branch.state_dict().items())  # bit-identical, running stats included
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.head.parameters())
    # the penalty's d D / d x flows through the branch: non-zero through the branch alone and through the whole critic
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D.branch(x)[0].sum(), x)
    assert g.abs().sum() > 0
    # and it equals plain autograd on the classifier itself (same function of x, computed without backbones.py)
    x2 = real.clone().requires_grad_(True)
    seen = {}
    h = cnn.fc2.register_forward_hook(lambda mod, inp, out: seen.setdefault("h", inp[0]))
    cnn((x2 + 1) / 2)
    h.remove()
    (g_ref,) = torch.autograd.grad(seen["h"].sum(), x2)
    torch.testing.assert_close(g, g_ref)
    assert D(x).shape == (2,)


def test_reads_the_classifier_from_a_utility_runs_experiment_config(tmp_path):
    """A run folder as breastgan utility lays it out: <experiment>/config.yaml and runs/<clf>/<fraction>/<arm>/seed<k>/best.safetensors."""
    from breastgan.utility.data import TrainingSet
    from breastgan.utility.experiment import ExperimentConfig
    from breastgan.utility.fit import FitConfig, fit

    cfg = ExperimentConfig.model_validate({
        "name": "u", "output_dir": str(tmp_path), "classes": ["benign", "malignant"], "image_size": 32,
        "centres": {"A": {"dataset": "phantom", "args": {"n": 8, "size": 32, "seed": 1}}}, "receiving": "A", "n_added": 0,
        "arms": [{"kind": "none"}], "fractions": [1.0], "seeds": [0], "device": "cpu",
        "classifiers": [{"name": "cnn", "label": "BUSI CNN", "args": TINY_CNN}]})
    exp = tmp_path / "u"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    run = exp / "runs" / "BUSI_CNN" / "100pct" / "none" / "seed0"
    g = torch.Generator().manual_seed(0)
    data = TrainingSet(torch.rand(8, 1, 32, 32, generator=g), torch.tensor([0, 1] * 4), ["A"] * 8, [f"i{i}" for i in range(8)])
    torch.manual_seed(0)
    model = CLASSIFIERS.build("cnn", TINY_CNN, num_classes=2, image_size=32)
    fit(model, data, data, FitConfig(epochs=1, batch_size=4), seed=0, run_dir=run)  # writes run/best.safetensors
    b = build_backbone({"name": "utility_classifier", "weights": str(run)})
    assert b.classifier == "cnn" and b.image_size == 32 and b.channels == (16,) and b.classifier_args == TINY_CNN
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(b(x)[0].flatten(1), _reference_embedding(model.eval(), (x + 1) / 2))
    # outside an experiment, the classifier must be named
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not inside a breastgan utility experiment"):
        build_backbone({"name": "utility_classifier", "weights": str(lone)})


def test_timm_classifier_cut_is_the_pre_logits_features(tmp_path):
    args = {"input_size": 32, "timm_kwargs": {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}}
    torch.manual_seed(0)
    swin = CLASSIFIERS.build("swin_t", args, num_classes=2, image_size=32).eval()
    path = _save_as_fit_does(swin, tmp_path / "best.safetensors")
    b = build_backbone({"name": "utility_classifier", "weights": str(path), "classifier": "swin_t", "classifier_args": args, "image_size": 32})
    assert b.channels == (16,)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    seen = {}
    h = swin.net.head.fc.register_forward_hook(lambda mod, inp, out: seen.setdefault("h", inp[0]))
    with torch.no_grad():
        swin((x + 1) / 2)
        out = b(x)[0]
    h.remove()
    torch.testing.assert_close(out.flatten(1), seen["h"])


def test_errors_name_the_file_and_the_tensor(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*best.safetensors"):
        build_backbone({"name": "utility_classifier", "weights": str(tmp_path / "nowhere"), "classifier": "cnn", "image_size": 64})
    path = _save_as_fit_does(_trained_looking_cnn(**TINY_CNN), tmp_path / "best.safetensors")
    # wrong classifier args (default widths instead of the trained ones): the header check names file and tensor
    with pytest.raises(ValueError, match=r"best\.safetensors: tensor 'features\.0\.weight' has shape \[4, 1, 3, 3\], the architecture expects \[16, 1, 3, 3\]"):
        build_backbone({"name": "utility_classifier", "weights": str(path), "classifier": "cnn", "image_size": 64})
    # wrong image size: FC1's input width differs
    with pytest.raises(ValueError, match=r"best\.safetensors: tensor 'fc1\.weight' has shape"):
        build_backbone({"name": "utility_classifier", "weights": str(path), "classifier": "cnn", "classifier_args": TINY_CNN, "image_size": 32})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "best.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="junk/best.safetensors: .*not a safetensors file"):
        build_backbone({"name": "utility_classifier", "weights": str(tmp_path / "junk"), "classifier": "cnn", "image_size": 64})
    with pytest.raises(ValueError, match="classifier_argz"):
        build_backbone({"name": "utility_classifier", "weights": str(path), "classifier_argz": {}})
