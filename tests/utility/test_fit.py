"""Pitfalls 1-3: train/eval modes every epoch, the sampler really draws added images, added images can be sampled."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from breastgan.utility.classifiers import CLASSIFIERS
from breastgan.utility.data import EpochSampler, TrainingSet, synthetic_to_set, pool_to_set
from breastgan.utility.fit import FitConfig, assert_mode, fit, predict


class ModeSpy(nn.Module):
    """A tiny classifier that records the mode of every forward call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)
        self.calls: list[tuple[bool, bool]] = []  # (module.training, dropout.training)

    def forward(self, x):
        self.calls.append((self.training, self.drop.training))
        h = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return F.log_softmax(self.fc(self.drop(h)), dim=1)


def _sets(make_pool, n_real=(24, 8), n_syn=16):
    train_real = pool_to_set(make_pool({0: n_real[0], 1: n_real[1]}), 16)
    syn = synthetic_to_set(torch.rand(n_syn, 1, 16, 16), 1, 16, "synthetic:g")
    val = pool_to_set(make_pool({0: 10, 1: 10}, source="V", seed=3), 16)
    return TrainingSet.concat([train_real, syn]), val


def test_training_runs_in_train_mode_every_epoch_and_validation_in_eval_mode(make_pool, tmp_path):
    train, val = _sets(make_pool)
    model = ModeSpy()
    cfg = FitConfig(epochs=3, batch_size=8)
    batches_per_epoch = len(train) // 8
    val_calls = -(-len(val) // cfg.eval_batch_size)
    fit(model, train, val, cfg, seed=0, run_dir=tmp_path)
    calls = model.calls
    per_epoch = batches_per_epoch + val_calls
    assert len(calls) == 3 * per_epoch
    for e in range(3):
        chunk = calls[e * per_epoch : (e + 1) * per_epoch]
        assert all(m and d for m, d in chunk[:batches_per_epoch]), f"epoch {e + 1} trained outside train mode"
        assert not any(m or d for m, d in chunk[batches_per_epoch:]), f"epoch {e + 1} validated in train mode"


def test_batch_norm_keeps_learning_after_the_first_validation(make_pool, tmp_path):
    train, val = _sets(make_pool)
    model = CLASSIFIERS.build("cnn", {"channels": [4, 4, 4, 4], "hidden": 8}, num_classes=2, image_size=16)
    bn = model.features[1]
    snapshots = []

    def hook(*_):
        snapshots.append(bn.running_mean.clone())

    bn.register_forward_hook(hook)
    fit(model, train, val, FitConfig(epochs=2, batch_size=8), seed=0, run_dir=tmp_path)
    n_batches = len(train) // 8
    epoch2_train = snapshots[n_batches + 1 : 2 * n_batches + 1]  # after epoch 1's batches and its validation pass
    assert not torch.equal(epoch2_train[0], epoch2_train[-1]), "running statistics frozen in epoch 2"


def test_assert_mode_names_the_module_in_the_wrong_mode():
    m = ModeSpy().train()
    m.drop.eval()
    with pytest.raises(RuntimeError, match="drop"):
        assert_mode(m, True)


def test_predict_restores_train_mode(make_pool):
    m = ModeSpy().train()
    predict(m, pool_to_set(make_pool({0: 3, 1: 3}), 16))
    assert m.training and m.drop.training


@pytest.mark.parametrize("mode", ["shuffle", "class_balanced"])
def test_realised_mix_contains_the_added_images(make_pool, tmp_path, mode):
    """Pitfall 2: the logged draws per source show synthetic images in every epoch in the expected share."""
    train, val = _sets(make_pool, n_real=(40, 10), n_syn=30)
    fit(ModeSpy(), train, val, FitConfig(epochs=4, batch_size=10, sampler=mode), seed=0, run_dir=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4
    for rec in log:
        drawn = rec["drawn_by_source"]
        assert sum(drawn.values()) == len(train)
        if mode == "shuffle":
            assert drawn == {"A": 50, "synthetic:g": 30}
    if mode == "class_balanced":
        # lesion class (10 real + 30 synthetic) gets half the draws; synthetic are 3/4 of it: 3/8 of all
        share = sum(r["drawn_by_source"].get("synthetic:g", 0) for r in log) / (4 * len(train))
        assert share == pytest.approx(3 / 8, abs=0.08)


def test_sampler_weights_cover_the_whole_concatenated_set():
    labels = torch.tensor([0] * 30 + [1] * 10 + [1] * 20)  # real healthy, real lesion, synthetic lesion
    s = EpochSampler(labels, "class_balanced")
    assert s.weights.shape[0] == 60
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([s.epoch(g) for _ in range(50)])
    assert (idx >= 40).float().mean().item() == pytest.approx(1 / 3, abs=0.03)


def test_added_images_can_be_indexed_and_loaded(make_pool):
    """Pitfall 3: every item of the combined set, synthetic included, is retrievable through a DataLoader."""
    train, _ = _sets(make_pool)
    loader = torch.utils.data.DataLoader(train, batch_size=7, shuffle=True)
    seen = 0
    for x, y in loader:
        assert x.shape[1:] == (1, 16, 16) and x.dtype == torch.float32
        seen += len(y)
    assert seen == len(train)
    x, y = train[len(train) - 1]  # the last item is synthetic
    assert train.sources[-1] == "synthetic:g" and y == 1 and x.shape == (1, 16, 16)


def test_best_validation_auprc_checkpoint_is_kept_and_loaded(make_pool, tmp_path):
    train, val = _sets(make_pool)
    model = CLASSIFIERS.build("cnn", {"channels": [4, 4, 4, 4], "hidden": 8}, num_classes=2, image_size=16)
    res = fit(model, train, val, FitConfig(epochs=4, batch_size=8), seed=0, run_dir=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["val_auprc"])
    assert res.best_epoch == min(r["epoch"] for r in log if r["val_auprc"] == best["val_auprc"])
    saved = load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_cnn_matches_the_study_size():
    m = CLASSIFIERS.build("cnn", {}, num_classes=2, image_size=128)
    n = sum(p.numel() for p in m.parameters())
    assert 1.0e6 < n < 1.2e6
    out = m.eval()(torch.rand(2, 1, 128, 128))
    assert torch.allclose(out.exp().sum(1), torch.ones(2))


def test_swin_stacks_grey_to_three_channels_and_returns_log_probabilities():
    m = CLASSIFIERS.build("swin_t", {"input_size": 32, "timm_kwargs": {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}},
                          num_classes=2, image_size=16)
    out = m.eval()(torch.rand(3, 1, 16, 16))
    assert out.shape == (3, 2) and torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
