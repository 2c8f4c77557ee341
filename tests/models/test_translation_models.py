"""Translation building blocks: ResNet / U-Net generators, PatchGAN (receptive field), loss terms, image pool, LR rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from breastgan.losses import LOSS_TERMS, TermInputs
from breastgan.losses.translation_terms import CycleTerm, IdentityTerm, Pix2PixL1Term
from breastgan.models.patchgan import PatchGAN, output_size, receptive_field
from breastgan.models.registry import DISCRIMINATORS, GENERATORS
from breastgan.models.resnet_generator import ResnetGenerator
from breastgan.models.unet import UNetGenerator
from breastgan.training.image_pool import ImagePool
from breastgan.training.recipes.cyclegan import init_normal, linear_decay_factor, step_lambda


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add contention
    yield
    torch.set_num_threads(n)


# -- PatchGAN --------------------------------------------------------------------------------------
def rf_from_layers(convs: list[nn.Conv2d]) -> int:
    """Receptive field from the built module's own conv layers (independent of patchgan.conv_plan)."""
    r = 1
    for c in reversed(convs):
        r = (r - 1) * c.stride[0] + c.kernel_size[0]
    return r


def test_patchgan_receptive_field_is_70_from_its_layer_list_and_maps_are_30x30():
    d = PatchGAN(channels=1, ndf=4)
    assert [(c.kernel_size[0], c.stride[0]) for c in d.conv_layers()] == [(4, 2), (4, 2), (4, 2), (4, 1), (4, 1)]
    assert rf_from_layers(d.conv_layers()) == 70 == d.receptive_field == receptive_field(3)
    # the reference's chain 1 -> 4 -> 7 -> 16 -> 34 -> 70
    assert [rf_from_layers(d.conv_layers()[-k:]) for k in range(1, 6)] == [4, 7, 16, 34, 70]
    assert tuple(d(torch.zeros(1, 1, 256, 256)).shape) == (1, 1, 30, 30)
    assert output_size(1024, 1280, 3) == (126, 158)
    assert receptive_field(1) == 16 and receptive_field(2) == 34 and receptive_field(4) == 142
    assert rf_from_layers(PatchGAN(ndf=2, n_layers=4).conv_layers()) == 142


def test_patchgan_receptive_field_matches_the_gradient_support():
    torch.manual_seed(0)
    d = init_normal(PatchGAN(channels=1, ndf=2, n_layers=2, norm="none"), 0.3)
    x = torch.randn(1, 1, 96, 96, requires_grad=True)
    y = d(x)
    cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
    y[0, 0, cy, cx].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows[-1] - rows[0] + 1) == receptive_field(2) == 34
    assert int(cols[-1] - cols[0] + 1) == 34


def test_patchgan_registry_entry_reports_the_receptive_field():
    entry = DISCRIMINATORS.entry("patchgan")
    assert "receptive field 70x70" in entry.summary
    assert "receptive field 70 px at 3" in entry.args_model.model_fields["n_layers"].description


def test_breastgan_models_shows_the_patchgan_receptive_field():
    from typer.testing import CliRunner

    from breastgan.cli import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["models"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "patchgan" in ln)
    assert "70x70" in line


# -- generators ------------------------------------------------------------------------------------
def test_resnet_generator_layers_follow_the_reference():
    g = ResnetGenerator(channels=1, ngf=4, n_blocks=6)
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not n.affine and not n.track_running_stats for n in norms)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 6
    assert sum(type(m).__name__ == "ResnetBlock" for m in g.modules()) == 6
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (7, 7) and convs[0].in_channels == 1 and convs[-1].out_channels == 1
    assert sum(isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) and m.output_padding == (1, 1) for m in g.modules()) == 2
    assert isinstance(list(g.modules())[-1], nn.Tanh)
    # the reference logs 11.378 M parameters for resnet_9blocks (3 channels): 11,378,179
    assert sum(p.numel() for p in ResnetGenerator(channels=3, ngf=64, n_blocks=9).parameters()) == 11_378_179


def test_resnet_generator_keeps_any_multiple_of_4_and_names_other_sizes():
    g = ResnetGenerator(channels=1, ngf=4, n_blocks=1).eval()
    with torch.no_grad():
        assert tuple(g(torch.zeros(1, 1, 36, 52)).shape) == (1, 1, 36, 52)
    with pytest.raises(ValueError, match=r"multiples of 4, got 30x52"):
        g(torch.zeros(1, 1, 30, 52))


def test_unet_shapes_sizes_and_reference_parameter_count():
    u = UNetGenerator(channels=1, ngf=4, depth=4).eval()
    assert u.size_multiple == 16
    with torch.no_grad():
        assert tuple(u(torch.zeros(2, 1, 48, 64)).shape) == (2, 1, 48, 64)
    with pytest.raises(ValueError, match=r"multiples of 16, got 40x40"):
        u(torch.zeros(1, 1, 40, 40))
    # the reference logs "[Network G] Total number of parameters : 54.414 M" for unet_256 (3 channels)
    with torch.device("meta"):
        assert round(sum(p.numel() for p in UNetGenerator(channels=3, ngf=64, depth=8).parameters()) / 1e6, 3) == 54.414
    assert sum(isinstance(m, nn.Dropout) for m in UNetGenerator(channels=1, ngf=2, depth=8).modules()) == 3


def test_translators_are_registered_with_the_translation_tag():
    for key in ("resnet_generator", "unet"):
        assert "translation" in GENERATORS.entry(key).tags
    assert GENERATORS.entry("resnet_generator").validate_args({}).model_dump()["channels"] == 1  # grey by default


def test_init_normal_is_n0_002():
    torch.manual_seed(0)
    g = init_normal(ResnetGenerator(channels=1, ngf=16, n_blocks=2))
    w = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3


# -- loss terms ------------------------------------------------------------------------------------
def test_identity_loss_is_zero_for_an_identity_generator_and_terms_are_l1():
    b = torch.rand(3, 1, 8, 8) * 2 - 1
    ident = nn.Identity()
    term = IdentityTerm(5.0, "ab")
    assert term.log_name == "identity_ab" and float(term(TermInputs(extra={"identity_ab": ident(b), "target_real_ab": b}), None)) == 0.0
    a, r = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.25)
    assert float(CycleTerm(10.0, "a")(TermInputs(extra={"reconstructed_a": r, "real_a": a}), None)) == pytest.approx(0.25)
    assert float(Pix2PixL1Term(100.0)(TermInputs(extra={"fake": -r, "target": a}), None)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="provided no"):
        CycleTerm(1.0, "b")(TermInputs(extra={}), None)
    assert {"cycle", "identity", "pix2pix_l1"} <= set(LOSS_TERMS.names())


# -- image pool ------------------------------------------------------------------------------------
def test_image_pool_fills_first_then_mixes_at_its_probability():
    pool = ImagePool(size=4, p_stored=0.5)
    g = torch.Generator().manual_seed(0)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first, torch.rand(4, 2, generator=g)), first) and len(pool) == 4  # filling: new images back
    stored = returned = 0
    for k in range(400):
        new = (100.0 + 8 * k + torch.arange(8.0)).view(8, 1, 1, 1)  # every image distinct
        out = pool.query(new, torch.rand(8, 2, generator=g))
        from_pool = (out != new).flatten()
        stored += int(from_pool.sum())
        returned += 8
        assert pool.last_from_pool == int(from_pool.sum())
    assert abs(stored / returned - 0.5) < 0.03  # 3200 draws: std 0.009
    # the swap: a returned stored image is replaced by the new one
    pool = ImagePool(size=2, p_stored=1.0)
    pool.query(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1), torch.zeros(2, 2))
    out = pool.query(torch.tensor([9.0]).view(1, 1, 1, 1), torch.tensor([[0.0, 0.9]]))  # slot int(0.9 * 2) = 1
    assert float(out) == 2.0 and [float(i) for i in pool.images] == [1.0, 9.0]


def test_image_pool_size_0_is_off_and_state_round_trips():
    assert torch.equal(ImagePool(0).query(torch.ones(2, 1, 2, 2), torch.rand(2, 2)), torch.ones(2, 1, 2, 2))
    p = ImagePool(3)
    p.query(torch.rand(2, 1, 2, 2), torch.rand(2, 2))
    q = ImagePool(3)
    q.load_state_dict(p.state_dict())
    assert len(q) == 2 and all(torch.equal(a, b) for a, b in zip(p.images, q.images))
    with pytest.raises(ValueError, match="size 3, this run's is 5"):
        ImagePool(5).load_state_dict(p.state_dict())


# -- learning-rate rule ----------------------------------------------------------------------------
def test_lr_rule_matches_the_reference_epochs():
    lr = 2e-4
    f = lambda epoch_1based: lr * linear_decay_factor(epoch_1based - 1, 100, 100)  # noqa: E731
    assert f(1) == lr and f(100) == lr
    assert f(101) == pytest.approx(lr * (1 - 1 / 101))
    assert f(150) == pytest.approx(1.0099e-4, rel=1e-4)
    assert f(200) == pytest.approx(1.980e-6, rel=1e-3)


def test_lr_schedule_stepped_per_step_changes_at_epoch_boundaries():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, step_lambda(3, 2, 2))
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # epochs 0, 1 constant; epoch 2: 1 - 1/3; epoch 3: 1 - 2/3; epoch 4: 0
    want = [1.0] * 6 + [2 / 3] * 3 + [1 / 3] * 3 + [0.0]
    assert seen == pytest.approx(want)
