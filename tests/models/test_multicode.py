"""G1 of dm-GAN: layer splitting and the mGANprior fusion, checked against hand computations."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generation"))  # handbuilt.py: hand-built generators and runs
import handbuilt  # noqa: E402
import pytest
import torch
from torch import nn

from breastgan.models.multicode import LAYER_SPLITTERS, MultiCodeGenerator, split_points
from breastgan.models.progan import ProGANGenerator


def dcgan(seed: int = 1, image_size: int = 32, latent_dim: int = 16, **args) -> nn.Module:
    return handbuilt.dcgan(seed, image_size=image_size, latent_dim=latent_dim, **args)  # conv weights N(0, 0.15)


def progan(stage: int = 2, alpha=None) -> ProGANGenerator:
    torch.manual_seed(2)
    return ProGANGenerator(image_size=(40, 32), base_size=(5, 4), stage=stage, widths=[8, 8, 4, 4], latent_dim=12, alpha=alpha).eval()


def test_split_points_name_every_layer():
    assert split_points(dcgan(image_size=32)) == ["block1_4x4", "block2_8x8", "block3_16x16"]
    assert split_points(dcgan(image_size=64)) == ["block1_4x4", "block2_8x8", "block3_16x16", "block4_32x32"]
    assert split_points(progan(2)) == ["dense_5x4", "conv0_5x4", "stage1_conv_up_10x8", "stage1_conv_10x8", "stage2_conv_up_20x16", "stage2_conv_20x16"]
    assert set(LAYER_SPLITTERS.names()) >= {"dcgan", "progan"}


@pytest.mark.parametrize("make, layers", [(lambda: dcgan(norm="batch"), (1, 2, 3)), (lambda: dcgan(norm="none"), (1, 3)),
                                           (lambda: progan(2), (1, 2, 3, 4, 5, 6)), (lambda: progan(0), (1, 2))])
def test_one_code_with_alpha_one_is_the_unsplit_generator(make, layers):
    # fused = F * alpha / N: N = 1, alpha = 1 gives F(z); N identical codes with alpha = 1 give sum F / N = F(z) too
    G = make()
    z = torch.randn(3, G.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = G(z)
        for layer in layers:
            g1 = MultiCodeGenerator(G, layer, 1)
            torch.testing.assert_close(g1(z[:, None], torch.ones(3, 1, g1.feature_channels)), want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g1.upper(g1.lower(z)), want, rtol=1e-5, atol=1e-6)
            g5 = MultiCodeGenerator(G, layer, 5)
            torch.testing.assert_close(g5(z[:, None].expand(-1, 5, -1), torch.ones(3, 5, g5.feature_channels)), want, rtol=1e-5, atol=1e-5)


def test_fusion_matches_a_hand_computation_with_the_extra_one_over_n():
    G = dcgan()
    g1 = MultiCodeGenerator(G, 2, 3)
    g = torch.Generator().manual_seed(1)
    codes, alphas = torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, g1.feature_channels, generator=g)
    with torch.no_grad():
        got = g1.fuse(codes, alphas)
        want = torch.zeros_like(got)
        for b in range(2):
            for n in range(3):
                f = G.net[:6](codes[b, n][None, :, None, None])[0]  # layers 1-2 of the DCGAN by hand: two (conv, BN, ReLU) blocks
                for c in range(g1.feature_channels):
                    want[b, c] += f[c] * alphas[b, n, c] / 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert g1.feature_shape == (got.shape[1], 8, 8) and tuple(g1.features(codes, alphas).shape) == tuple(got.shape)


def test_gradient_of_the_fusion_in_alpha_is_the_feature_sum_over_n():
    # d sum(fused) / d alpha[b, n, c] = sum_hw F_n[c] / N, independent of autograd through the upper layers
    G = dcgan()
    g1 = MultiCodeGenerator(G, 1, 4)
    codes = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    alphas = g1.init_alphas(2).requires_grad_(True)
    g1.fuse(codes, alphas).sum().backward()
    with torch.no_grad():
        feats = g1.lower(codes.reshape(8, 16)).view(2, 4, *g1.feature_shape)
    torch.testing.assert_close(alphas.grad, feats.sum(dim=(3, 4)) / 4)


def test_attributes_and_initial_values():
    g1 = MultiCodeGenerator(dcgan(), 3, 20)
    assert (g1.latent_dim, g1.n_codes, g1.layer, g1.channels, g1.image_size) == (16, 20, 3, 1, (32, 32))
    assert g1.feature_shape == (8, 16, 16) and g1.layer_name == "block3_16x16"
    a = g1.init_alphas(2)
    assert a.shape == (2, 20, 8) and torch.all(a == 1 / 20)
    c1, c2 = g1.init_codes(2, torch.Generator().manual_seed(3)), g1.init_codes(2, torch.Generator().manual_seed(3))
    assert c1.shape == (2, 20, 16) and torch.equal(c1, c2)
    out = g1(c1, a)
    assert out.shape == (2, 1, 32, 32) and float(out.abs().max()) <= 1


def test_the_generator_is_frozen_and_stays_in_eval_mode():
    G = dcgan()
    g1 = MultiCodeGenerator(G, 2, 4).train()
    assert g1.training and not G.training and not any(m.training for m in G.modules())
    assert all(not p.requires_grad for p in G.parameters())
    stats = G.net[1].running_mean.clone()
    codes = g1.init_codes(3, torch.Generator().manual_seed(0)).requires_grad_(True)
    alphas = g1.init_alphas(3).requires_grad_(True)
    g1(codes, alphas).square().mean().backward()
    assert all(p.grad is None for p in G.parameters())
    assert codes.grad is not None and alphas.grad is not None and float(codes.grad.abs().sum()) > 0
    assert torch.equal(G.net[1].running_mean, stats)  # batch-norm statistics never move


def test_bad_layers_types_and_inputs_give_clear_errors():
    G = dcgan()
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match=r"valid layers are 1\.\.3 \(1: block1_4x4, 2: block2_8x8, 3: block3_16x16\)"):
            MultiCodeGenerator(G, bad)
    with pytest.raises(ValueError, match="n_codes must be an integer >= 1"):
        MultiCodeGenerator(G, 1, 0)

    class Odd(nn.Module):
        latent_dim, channels, image_size, num_classes = 4, 1, (8, 8), 0

    with pytest.raises(ValueError, match=r"cannot split a Odd generator; supported generator types: dcgan, progan"):
        MultiCodeGenerator(Odd(), 1)
    with pytest.raises(ValueError, match="conditional generator \\(2 classes\\) is not supported"):
        MultiCodeGenerator(dcgan(num_classes=2), 1)
    with pytest.raises(ValueError, match="mid fade-in"):
        MultiCodeGenerator(progan(2, alpha=0.5), 1)
    g1 = MultiCodeGenerator(G, 1, 3)
    with pytest.raises(ValueError, match=r"codes: expected shape \(B, 3, 16\)"):
        g1(torch.zeros(2, 4, 16), torch.zeros(2, 4, g1.feature_channels))
    with pytest.raises(ValueError, match=r"alphas: expected shape \(2, 3, 32\)"):
        g1(torch.zeros(2, 3, 16), torch.zeros(2, 3, 7))
