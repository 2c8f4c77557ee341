import math

import pytest
import torch

from breastgan.losses import LOSSES, gradient_penalty


def test_minimax_and_nonsaturating_closed_form():
    zero = torch.zeros(4)
    mm = LOSSES.build("minimax")
    ns = LOSSES.build("nonsaturating")
    # D outputs 0.5 everywhere: -log(0.5) - log(0.5) = 2 log 2
    assert mm.discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    # textbook G: log(1 - D(G(z))) = log 0.5; non-saturating: -log D(G(z)) = log 2
    assert mm.generator_loss(zero).item() == pytest.approx(math.log(0.5))
    assert ns.generator_loss(zero).item() == pytest.approx(math.log(2))
    # saturation: when D confidently rejects fakes, the minimax G gradient vanishes, the NS one does not
    logit = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(mm.generator_loss(logit), logit)
    (g_ns,) = torch.autograd.grad(ns.generator_loss(logit), logit)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


def test_label_smoothing_targets():
    fixed = LOSSES.build("nonsaturating", {"label_smoothing": 0.9})
    t = fixed.real_targets(5, None, torch.device("cpu"))
    assert torch.all(t == 0.9)
    rng = LOSSES.build("nonsaturating", {"label_smoothing": [0.8, 1.1]})
    t = rng.real_targets(10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.min() >= 0.8 and t.max() <= 1.1 and abs(t.mean().item() - 0.95) < 0.01
    # BCE with a smoothed target of 0.9 at logit 0: -(0.9 log .5 + 0.1 log .5) = log 2, plus fake term log 2
    assert fixed.discriminator_loss(torch.zeros(3), torch.zeros(3), torch.full((3,), 0.9)).item() == pytest.approx(2 * math.log(2))
    assert LOSSES.build("nonsaturating").real_targets(3, None, torch.device("cpu")) is None


def test_lsgan_hinge_wgan_closed_form():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.5])
    ls = LOSSES.build("lsgan")
    assert ls.discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0 + 4) / 2 + 0.5 * (1 + 0.25) / 2)
    assert ls.generator_loss(fake).item() == pytest.approx(0.5 * (4 + 0.25) / 2)
    h = LOSSES.build("hinge")
    assert h.discriminator_loss(real, fake).item() == pytest.approx((0 + 0) / 2 + (0 + 1.5) / 2)
    assert h.generator_loss(fake).item() == pytest.approx(0.25)
    w = LOSSES.build("wgan-gp")
    assert w.discriminator_loss(real, fake).item() == pytest.approx(-0.25 - 2.0)
    assert w.gp_lambda == 10 and w.uses_gradient_penalty


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = <w, x>: the gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly
    w = torch.randn(1, 1, 4, 4)
    critic = lambda x, y: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    gp = gradient_penalty(critic, real, fake, torch.rand(3, 1, 1, 1))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic_weights():
    lin = torch.nn.Linear(16, 1)
    critic = lambda x, y: lin(x.flatten(1)).squeeze(1)  # noqa: E731
    gp = gradient_penalty(critic, torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4), torch.rand(4, 1, 1, 1))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    w = lin.weight.detach()
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(lin.weight.grad, expected, atol=1e-5)


def test_smoothing_range_validated():
    from breastgan.registry import ConfigArgumentError

    with pytest.raises(ConfigArgumentError, match="low <= high"):
        LOSSES.build("minimax", {"label_smoothing": [1.1, 0.8]})
    with pytest.raises(ConfigArgumentError, match="unknown option for 'hinge'"):
        LOSSES.build("hinge", {"label_smoothing": 0.9})
