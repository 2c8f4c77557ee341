"""Progressive GAN networks: equalised-lr constants, pixel norm, minibatch stddev, shapes at every
stage from 5x4 to 1280x1024, and exact fade-in continuity (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from breastgan.models.progan import (
    EqualizedConv2d,
    EqualizedLinear,
    ProGANDiscriminator,
    ProGANGenerator,
    minibatch_stddev,
    num_stages,
    pixel_norm,
    stddev_group,
)
from breastgan.models.registry import DISCRIMINATORS, GENERATORS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: a second thread only adds contention on a shared CPU
    yield
    torch.set_num_threads(before)


def test_equalised_lr_constants_and_unit_variance_weights():
    conv = EqualizedConv2d(512, 512, 3)
    assert conv.scale == pytest.approx(0.0208, abs=5e-5)  # sqrt(2) / sqrt(3 * 3 * 512)
    w = conv.weight.detach()
    assert abs(float(w.mean())) < 0.005 and float(w.std()) == pytest.approx(1.0, abs=0.005)
    assert torch.equal(conv.bias.detach(), torch.zeros(512))
    # bias added after the scaling, not scaled: a zero weight gives exactly the bias
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(0.5)
    assert torch.equal(conv(torch.ones(1, 512, 3, 3)), torch.full((1, 512, 3, 3), 0.5))

    g = ProGANGenerator(image_size=(10, 8), stage=1, widths=[32, 16], latent_dim=8)
    assert g.to_image["1"].scale == pytest.approx(0.25)  # to-image from 16 channels, gain 1
    assert g.dense.scale == pytest.approx(math.sqrt(2) / 4 / math.sqrt(8))  # G's first dense layer: gain sqrt(2)/4
    d = ProGANDiscriminator(image_size=(10, 8), stage=1, widths=[32, 16])
    assert d.dense1.scale == pytest.approx(1 / math.sqrt(32))  # D's last dense layer: gain 1
    assert d.from_image["1"].scale == pytest.approx(math.sqrt(2))  # from-image 1x1 from 1 channel: sqrt(2) / sqrt(1)
    lin = EqualizedLinear(100, 10)
    x = torch.randn(3, 100)
    torch.testing.assert_close(lin(x), x @ (lin.weight * math.sqrt(2) / 10).T + lin.bias)


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(4, 7, 5, 3, dtype=torch.float64) * 3
    y = pixel_norm(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(4, 5, 3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_minibatch_stddev_identical_samples_and_reference_formula():
    x = torch.randn(1, 3, 5, 4).repeat(8, 1, 1, 1)
    y = minibatch_stddev(x)
    assert y.shape == (8, 4, 5, 4) and torch.equal(y[:, :3], x)
    torch.testing.assert_close(y[:, 3], torch.full((8, 5, 4), 1e-4))  # sqrt(1e-8)

    x = torch.randn(8, 3, 5, 4, dtype=torch.float64)
    y = minibatch_stddev(x, 4)
    a = x.numpy()
    for grp in (slice(0, 4), slice(4, 8)):  # contiguous groups of 4
        expect = np.sqrt(a[grp].var(axis=0) + 1e-8).mean()  # biased variance over the group
        np.testing.assert_allclose(y[grp, 3].numpy(), expect, rtol=1e-12)


def test_minibatch_stddev_group_for_small_and_indivisible_batches():
    assert stddev_group(2, 4) == 2  # smaller than the group: the whole batch
    assert stddev_group(6, 4) == 3  # not divisible: the largest divisor <= 4
    assert stddev_group(7, 4) == 1 and stddev_group(12, 4) == 4
    x = torch.randn(6, 2, 5, 4, dtype=torch.float64)
    y = minibatch_stddev(x, 4)
    expect = np.sqrt(x[:3].numpy().var(axis=0) + 1e-8).mean()
    np.testing.assert_allclose(y[:3, 2].numpy(), expect, rtol=1e-12)
    # a single sample: zero variance, the floor sqrt(1e-8)
    torch.testing.assert_close(minibatch_stddev(torch.randn(1, 2, 5, 4))[:, 2], torch.full((1, 5, 4), 1e-4))


def test_shapes_at_every_stage_from_5x4_to_1280x1024():
    widths = [2, 2, 2, 2, 1]
    assert num_stages((5, 4), (1280, 1024)) == 9
    for s in range(9):
        g = ProGANGenerator(image_size=(1280, 1024), stage=s, widths=widths, latent_dim=4)
        d = ProGANDiscriminator(image_size=(1280, 1024), stage=s, widths=widths)
        with torch.no_grad():
            x = g(torch.randn(1, 4))
            assert x.shape == (1, 1, 5 * 2**s, 4 * 2**s), s
            assert g.image_size == (5 * 2**s, 4 * 2**s)
            assert d(x).shape == (1,)


def test_sizes_that_are_not_base_times_a_power_of_two_are_refused_clearly():
    with pytest.raises(ValueError, match=r"image_size \(40, 30\) is not base_size \(5, 4\) x 2\*\*k"):
        num_stages((5, 4), (40, 30))
    with pytest.raises(ValueError, match="stage: 4 is beyond the last stage 3"):
        ProGANGenerator(image_size=(40, 32), stage=4, widths=[4])
    with pytest.raises(ValueError, match="aux_classifier"):
        ProGANDiscriminator(image_size=(40, 32), aux_classifier=True, num_classes=0)
    d = ProGANDiscriminator(image_size=(40, 32), stage=1, widths=[4])
    with pytest.raises(ValueError, match=r"stage 1 takes \(10, 8\) images, got \(20, 16\)"):
        d(torch.zeros(1, 1, 20, 16))


def _grown(cls, old, **kw):
    new = cls(**kw).double()
    state = new.state_dict()
    for k, v in old.state_dict().items():  # what the training loop carries over: same name and shape
        if k in state and state[k].shape == v.shape:
            state[k] = v.clone()
    new.load_state_dict(state)
    return new


@pytest.mark.parametrize("stage", [1, 3])
def test_fade_in_with_alpha_zero_is_exactly_the_previous_stage(stage):
    torch.manual_seed(stage)
    kw = dict(image_size=(80, 64), widths=[8, 6, 5, 4, 3], num_classes=2)
    g_old = ProGANGenerator(stage=stage - 1, latent_dim=6, **kw).double()
    g_new = _grown(ProGANGenerator, g_old, stage=stage, latent_dim=6, alpha=0.0, **kw)
    assert g_new.alpha.item() == 0.0 and f"alpha_{stage}" in dict(g_new.named_buffers())
    z, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        assert torch.equal(g_new(z, y), F.interpolate(g_old(z, y), scale_factor=2, mode="nearest"))
        g_new.alpha.fill_(1.0)
        assert not torch.equal(g_new(z, y), F.interpolate(g_old(z, y), scale_factor=2, mode="nearest"))

    d_old = ProGANDiscriminator(stage=stage - 1, aux_classifier=True, **kw).double()
    d_new = _grown(ProGANDiscriminator, d_old, stage=stage, aux_classifier=True, alpha=0.0, **kw)
    x = torch.randn(8, 1, 5 * 2**stage, 4 * 2**stage, dtype=torch.float64)
    with torch.no_grad():
        s_new, aux_new = d_new(x, return_aux=True)
        s_old, aux_old = d_old(F.avg_pool2d(x, 2), return_aux=True)
    assert torch.equal(s_new, s_old) and torch.equal(aux_new, aux_old) and aux_new.shape == (8, 2)


def test_registered_with_argument_models():
    assert "progan" in GENERATORS and "progan" in DISCRIMINATORS
    args = GENERATORS.entry("progan").validate_args({"latent_dim": 32, "widths": [8]}, "model.generator").model_dump()
    assert args["base_size"] == (5, 4) and args["image_size"] is None  # filled from the data by the recipe
    d = DISCRIMINATORS.entry("progan").validate_args({"mbstd_group": 2}, "model.discriminator").model_dump()
    assert d["mbstd_group"] == 2
    g = ProGANGenerator(image_size=(20, 16), stage=2, fmap_base=64, fmap_max=16)
    assert [g.args.width(s) for s in range(3)] == [16, 16, 8]  # min(fmap_base / 2**(s+1), fmap_max)
