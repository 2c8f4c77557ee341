"""Multi-code inversion (mGANprior): reconstructions of known targets, PSNR against torchmetrics, batch independence.

Measured on a 32x32 DCGAN (latent 16, random N(0, 0.15) conv weights), composing layer 2 (8x8),
Adam lr 0.05, 200 steps (numbers quoted in docs/inversion.md).
"""

from __future__ import annotations

import handbuilt
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from breastgan.generation.multicode_inversion import MultiCodeFit, invert_multicode, psnr_db
from breastgan.models.multicode import MultiCodeGenerator
from breastgan.registry import RegistryError

BUDGET = {"steps": 200, "optimizer": "adam", "lr": 0.05}


def dcgan(seed: int = 1, latent_dim: int = 16) -> torch.nn.Module:
    return handbuilt.dcgan(seed, latent_dim=latent_dim)  # 32x32, conv weights N(0, 0.15): images that vary with z


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)  # tiny convolutions: threads only add contention
    return dcgan()


def blend_targets(G, layer: int = 2, n: int = 2) -> torch.Tensor:
    """Images the generator makes from 4 known codes fused at ``layer``: outside the single-code range."""
    g = torch.Generator().manual_seed(5)
    src = MultiCodeGenerator(G, layer, 4)
    codes, alphas = torch.randn(n, 4, G.latent_dim, generator=g), 1 + 0.5 * torch.randn(n, 4, src.feature_channels, generator=g)
    with torch.no_grad():
        return (src(codes, alphas) + 1) / 2


def test_psnr_matches_torchmetrics_per_image():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 16, 12, generator=g)
    b = (a + 0.05 * torch.randn(4, 1, 16, 12, generator=g) * torch.arange(1, 5).view(4, 1, 1, 1)).clamp(0, 1)
    got = psnr_db(a, b)
    want = torch.stack([peak_signal_noise_ratio(b[i], a[i], data_range=1.0) for i in range(4)])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(psnr_db(a * 255, b * 255, data_range=255.0), want.float(), rtol=1e-5, atol=1e-4)
    assert torch.isinf(psnr_db(a, a)).all()


def test_generator_made_targets_reach_high_psnr_and_beat_single_code(G):
    x = blend_targets(G)
    multi = invert_multicode(MultiCodeGenerator(G, 2, 16), x, seed=0, **BUDGET)
    single = invert_multicode(MultiCodeGenerator(G, 2, 1), x, seed=0, **BUDGET)
    # measured: 16 codes 41.5 / 42.4 dB, one code 24.4 / 25.1 dB
    assert torch.all(multi.psnr_db > 30), multi.psnr_db
    assert torch.all(multi.psnr_db > single.psnr_db + 5), (multi.psnr_db, single.psnr_db)


def test_an_image_from_one_known_code_is_reconstructed(G):
    z = torch.randn(2, G.latent_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        x = (G(z) + 1) / 2
    fit = invert_multicode(MultiCodeGenerator(G, 2, 16), x, seed=0, **BUDGET)
    assert torch.all(fit.psnr_db > 30), fit.psnr_db  # measured 48.6 / 46.7 dB


def test_psnr_rises_with_the_number_of_codes_on_images_the_generator_did_not_make(G):
    from breastgan.data.phantom import generate_phantom

    x = generate_phantom(2, size=32, seed=1).images.float()
    means = [float(invert_multicode(MultiCodeGenerator(G, 3, n), x, seed=0, **BUDGET).psnr_db.mean()) for n in (1, 4, 16)]
    assert means[0] < means[1] < means[2], means  # measured 19.5 < 20.7 < 23.2 dB


@pytest.mark.parametrize("optimizer, lr", [("sgd", 20.0), ("adam", 0.05)])
def test_batched_equals_one_image_at_a_time(G, optimizer, lr):
    x = blend_targets(G, n=3)
    g1 = MultiCodeGenerator(G, 2, 4)
    kw = {"steps": 15, "optimizer": optimizer, "lr": lr}
    together = invert_multicode(g1, x, batch_size=3, seed=4, **kw)
    by_one = invert_multicode(g1, x, batch_size=1, seed=4, **kw)
    torch.testing.assert_close(together.codes, by_one.codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.alphas, by_one.alphas, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.mse, by_one.mse, rtol=1e-4, atol=1e-8)
    # and as separate calls, each given its own start
    codes0 = g1.init_codes(3, torch.Generator().manual_seed(9))
    joint = invert_multicode(g1, x, codes_init=codes0, **kw)
    for i in range(3):
        alone = invert_multicode(g1, x[i : i + 1], codes_init=codes0[i : i + 1], **kw)
        torch.testing.assert_close(alone.codes[0], joint.codes[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.alphas[0], joint.alphas[i], rtol=1e-4, atol=1e-5)


def test_the_best_iterate_is_kept_and_its_numbers_are_its_own(G):
    x = blend_targets(G)
    g1 = MultiCodeGenerator(G, 2, 4)
    codes0 = g1.init_codes(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start_mse = (((g1(codes0, g1.init_alphas(2)) + 1) / 2 - x) ** 2).flatten(1).mean(1)
    wild = invert_multicode(g1, x, steps=5, optimizer="sgd", lr=1e7, codes_init=codes0)  # every step overshoots
    assert torch.equal(wild.codes, codes0) and torch.all(wild.alphas == 1 / 4)
    torch.testing.assert_close(wild.mse, start_mse)
    fit = invert_multicode(g1, x, steps=30, optimizer="adam", lr=0.05, codes_init=codes0)
    with torch.no_grad():
        rec = (g1(fit.codes, fit.alphas).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(fit.mse, ((rec - x) ** 2).flatten(1).mean(1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(fit.psnr_db, psnr_db(rec, x), rtol=1e-4, atol=1e-4)
    assert torch.all(fit.mse < start_mse)
    assert isinstance(fit, MultiCodeFit) and fit.codes.shape == (2, 4, 16) and fit.alphas.shape == (2, 4, g1.feature_channels)
    assert {"n_codes", "layer", "steps", "optimizer", "lr", "perceptual_weight", "seed", "batch_size", "kept_iterate"} <= set(fit.settings)
    assert fit.settings["kept_iterate"] == "best" and fit.settings["n_codes"] == 4 and fit.settings["optimizer"] == "adam"


def test_the_perceptual_term_takes_a_local_frozen_backbone(G):
    from breastgan.models.backbones import build_backbone

    x = blend_targets(G, n=1)
    vgg = build_backbone({"name": "vgg19", "layer": "block1_pool"})  # random init: tests only (real use: a local weights file)
    g1 = MultiCodeGenerator(G, 2, 4)
    fit = invert_multicode(g1, x, steps=10, optimizer="adam", lr=0.05, perceptual_weight=0.001, perceptual=vgg)
    assert fit.settings["perceptual"]["name"] == "vgg19" and fit.settings["perceptual_weight"] == 0.001
    assert torch.isfinite(fit.psnr_db).all()
    with pytest.raises(ValueError, match="needs a perceptual network"):
        invert_multicode(g1, x, steps=1, perceptual_weight=0.1)


def test_bad_inputs_give_clear_errors(G):
    g1 = MultiCodeGenerator(G, 2, 3)
    x = blend_targets(G, n=1)
    with pytest.raises(ValueError, match=r"expected images of shape \(M, 1, 32, 32\) for this generator, got \(1, 1, 16, 16\)"):
        invert_multicode(g1, x[..., :16, :16], steps=1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        invert_multicode(g1, x * 2 - 1, steps=1)
    with pytest.raises(ValueError, match="NaN"):
        invert_multicode(g1, x * float("nan"), steps=1)
    with pytest.raises(RegistryError, match="unknown inversion optimizer 'lbfgs'; available: adam, sgd"):
        invert_multicode(g1, x, steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps and batch_size"):
        invert_multicode(g1, x, steps=0)
    with pytest.raises(ValueError, match=r"codes_init must have shape \(1, 3, 16\)"):
        invert_multicode(g1, x, steps=1, codes_init=torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match=r"alphas_init must have shape \(1, 3, 16\)"):
        invert_multicode(g1, x, steps=1, alphas_init=torch.zeros(1, 3, 5))
