"""dm-GAN's site discriminators: the site update, the split backward, the bank modes, PatchGAN's receptive field, shards.

References are independent of the code under test: plain autograd over one graph for the split
backward, N separate PatchGANs with N separate Adams for the bank, autograd's input-gradient support
for the receptive field, and hand-computed shard assignments.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from breastgan.losses.adversarial import LOSSES
from breastgan.models.patchgan import PatchGAN, receptive_field
from breastgan.training.sites.bank import BANK_MODES, DiscriminatorBank
from breastgan.training.sites.combine import renormalise, weighted_backward
from breastgan.training.sites.discriminator import SiteAnswer, site_update
from breastgan.training.sites.shards import ShardBy, Shards, make_shards, shard_weights

SIZE, NDF = 32, 8
PATCH = {"channels": 1, "ndf": NDF, "n_layers": 3, "norm": "instance"}


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class TinyGenerator(nn.Module):
    """z (b, 8) -> image (b, 1, 32, 32) in [-1, 1]; small but with a conv so the image gradient is mixed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4 * 8 * 8)
        self.up = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh())

    def forward(self, z):
        return self.up(self.fc(z).view(-1, 4, 8, 8))


def images(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * 2 - 1


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def plain_d_step(D: nn.Module, loss, real: torch.Tensor, fake: torch.Tensor) -> None:
    """The textbook D step, written out without site_update."""
    opt = adam(D.parameters())
    opt.zero_grad()
    loss.discriminator_loss(D(real), D(fake.detach())).backward()
    opt.step()


# ---------------------------------------------------------------------------------------------- (1), (2)


@pytest.mark.parametrize("loss_name", ["lsgan", "nonsaturating", "hinge"])
@pytest.mark.parametrize("shared_graph", [False, True])
def test_split_backward_equals_one_graph_over_all_discriminators(loss_name, shared_graph):
    torch.manual_seed(0)
    n, b = 3, 2
    loss = LOSSES.build(loss_name, {})
    G = TinyGenerator()
    Ds = [PatchGAN(**PATCH) for _ in range(n)]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n * b, 8, generator=g)
    real = images(g, n, b, 1, SIZE, SIZE)
    pi = shard_weights([5, 3, 2])

    # the split backward: sites update their D_j and return d g_loss_j / d fake_j; the centre weights them
    G_split = copy.deepcopy(G)
    D_sites = copy.deepcopy(Ds)
    fakes = list(G_split(z).split(b)) if shared_graph else [G_split(z[j * b:(j + 1) * b]) for j in range(n)]
    answers = []
    for j in range(n):
        d_loss, g_loss, grad = site_update(D_sites[j], adam(D_sites[j].parameters()), loss, real[j], fakes[j])
        answers.append(SiteAnswer(site=j, step=0, d_loss=d_loss, g_loss=g_loss, grad=grad, n_real=[5, 3, 2][j]))
    assert all(a.grad.shape == f.shape for a, f in zip(answers, fakes))
    weighted_backward(fakes, [a.grad for a in answers], shard_weights([a.n_real for a in answers]))
    split = grads_of(G_split)

    # one autograd graph: D_j' = D_j after a plain D step, L = sum_j pi_j g_loss(D_j'(G(z_j)))
    G_ref = copy.deepcopy(G)
    D_ref = copy.deepcopy(Ds)
    with torch.no_grad():
        fakes_ref = G_ref(z)
    for j in range(n):
        plain_d_step(D_ref[j], loss, real[j], fakes_ref[j * b:(j + 1) * b])
    fake_all = G_ref(z)
    total = sum(pi[j] * loss.generator_loss(D_ref[j](fake_all[j * b:(j + 1) * b])) for j in range(n))
    total.backward()
    ref = grads_of(G_ref)

    for a, r in zip(split, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-7)
    assert any(r.abs().max() > 0 for r in ref)
    # the sites' D parameters got no gradient from the generator loss and still require grad
    for D in D_sites:
        assert all(p.requires_grad for p in D.parameters())


def test_one_site_reduces_to_the_single_discriminator_gan():
    torch.manual_seed(2)
    loss = LOSSES.build("lsgan", {})
    G, D = TinyGenerator(), PatchGAN(**PATCH)
    g = torch.Generator().manual_seed(3)
    z, real = torch.randn(4, 8, generator=g), images(g, 4, 1, SIZE, SIZE)
    shards = make_shards(_AreaDataset([3, 5, 7, 9]), 1)
    assert shards.pi == [1.0] and renormalise({0: shards.pi[0]}, {0}) == {0: 1.0}

    G1, D1 = copy.deepcopy(G), copy.deepcopy(D)
    fake = G1(z)
    _, _, grad = site_update(D1, adam(D1.parameters()), loss, real, fake)
    weighted_backward([fake], [grad], shards.pi)

    # the single-discriminator GAN step written directly: D step, then G step against the updated D
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    plain_d_step(D2, loss, real, G2(z).detach())
    loss.generator_loss(D2(G2(z))).backward()

    for a, r in zip(grads_of(G1), grads_of(G2)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-8)
    for a, r in zip(D1.parameters(), D2.parameters()):
        torch.testing.assert_close(a, r)


def test_weighted_backward_and_renormalise_errors():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="as many"):
        weighted_backward([x * 2], [], [1.0])
    with pytest.raises(ValueError, match="shape"):
        weighted_backward([x * 2], [torch.ones(3)], [1.0])
    with pytest.raises(ValueError, match="detached"):
        weighted_backward([x.detach()], [torch.ones(2)], [1.0])
    weighted_backward([x * 2, x * 3], [torch.ones(2), torch.ones(2)], [0.25, 0.75])
    torch.testing.assert_close(x.grad, torch.full((2,), 0.25 * 2 + 0.75 * 3))
    with pytest.raises(ValueError, match="no site answered"):
        renormalise({0: 0.5, 1: 0.5}, set())
    out = renormalise({0: 0.5, 1: 0.3, 2: 0.2}, {1, 2})
    assert out == pytest.approx({1: 0.6, 2: 0.4}) and sum(out.values()) == pytest.approx(1.0)


def test_site_update_refuses_gradient_penalty_losses():
    D = PatchGAN(**PATCH)
    x = torch.zeros(1, 1, SIZE, SIZE)
    for name, args in [("wgan-gp", {}), ("lsgan", {"gp_lambda": 1.0})]:
        with pytest.raises(ValueError, match="gradient penalty"):
            site_update(D, adam(D.parameters()), LOSSES.build(name, args), x, x)


# ---------------------------------------------------------------------------------------------- (3)


def reference_sites(bank: DiscriminatorBank) -> list[tuple[nn.Module, torch.optim.Optimizer]]:
    """N separate PatchGANs with the bank's weights and N separate Adams (what N sites hold)."""
    out = []
    for D_bank in bank.discriminators:
        D = PatchGAN(**PATCH)
        D.load_state_dict(D_bank.state_dict())
        out.append((D, adam(D.parameters())))
    return out


@pytest.mark.parametrize("loss_name,smoothing", [("lsgan", None), ("nonsaturating", [0.8, 1.1])])
def test_bank_modes_equal_each_other_and_n_site_updates(loss_name, smoothing):
    n, b, steps = 3, 2, 3
    loss = LOSSES.build(loss_name, {} if smoothing is None else {"label_smoothing": smoothing})
    torch.manual_seed(4)
    banks = {m: DiscriminatorBank(n, PATCH, mode=m) for m in BANK_MODES.names()}
    state = banks["loop"].state_dict()
    for bank in banks.values():
        bank.load_state_dict(state)
        assert list(bank.state_dict()) == list(state)  # same checkpoint tensor names whatever the mode
        assert bank.mode == bank.requested_mode
    opts = {m: adam(bank.parameters()) for m, bank in banks.items()}
    sites = reference_sites(banks["loop"])
    data = torch.Generator().manual_seed(5)
    targets = {m: torch.Generator().manual_seed(6) for m in [*banks, "sites"]}
    for _ in range(steps):
        real, fake = images(data, n, b, 1, SIZE, SIZE), images(data, n, b, 1, SIZE, SIZE)
        expected = [site_update(D, opt, loss, real[j], fake[j], generator=targets["sites"]) for j, (D, opt) in enumerate(sites)]
        d_ref = torch.tensor([e[0] for e in expected])
        g_ref = torch.tensor([e[1] for e in expected])
        grad_ref = torch.stack([e[2] for e in expected])
        assert grad_ref.abs().max() > 0
        for m, bank in banks.items():
            d, gl, grads = bank.update(opts[m], loss, real, fake, generator=targets[m])
            assert d.shape == (n,) and gl.shape == (n,) and grads.shape == fake.shape
            torch.testing.assert_close(d, d_ref, rtol=1e-4, atol=1e-6, msg=lambda s: f"{m} d_loss: {s}")
            torch.testing.assert_close(gl, g_ref, rtol=1e-4, atol=1e-6, msg=lambda s: f"{m} g_loss: {s}")
            # relative to the gradient's scale: float sums in another order differ by ~1e-7 of it
            scale = grad_ref.abs().max().item()
            torch.testing.assert_close(grads, grad_ref, rtol=1e-4, atol=1e-5 * scale, msg=lambda s: f"{m} grads: {s}")
    # a conv bias followed by instance norm has gradient 0 (the norm subtracts it); what autograd returns is
    # rounding residue (~1e-10) whose sign depends on summation order, and Adam turns it into steps of
    # about lr: two exact implementations may move these biases apart by up to ~2 * steps * lr
    layers = banks["loop"].discriminators[0].model
    cancelled = {f"model.{i}.bias" for i in range(len(layers) - 1) if isinstance(layers[i + 1], nn.InstanceNorm2d)}
    assert cancelled == {"model.2.bias", "model.5.bias", "model.8.bias"}
    for m, bank in banks.items():
        for D_bank, (D, _) in zip(bank.discriminators, sites):
            for (name, p), q in zip(D_bank.named_parameters(), D.parameters()):
                # two Adams each move <= ~lr per step; elsewhere Adam's 1/sqrt(v) lets an element with a tiny
                # gradient carry its rounding into the step: a tenth of lr over the steps (a wrong gradient moves ~lr)
                atol = 2 * steps * 2e-4 if name in cancelled else 0.1 * 2e-4
                torch.testing.assert_close(p, q, rtol=1e-4, atol=atol, msg=lambda s: f"{m} {name}: {s}")
        assert all(p.requires_grad for p in bank.parameters())


def test_bank_forward_scores_each_input_with_its_own_discriminator():
    torch.manual_seed(7)
    x = images(torch.Generator().manual_seed(8), 3, 2, 1, SIZE, SIZE)
    loop = DiscriminatorBank(3, PATCH, mode="loop")
    expected = torch.stack([D(x[j]) for j, D in enumerate(loop.discriminators)])
    for m in BANK_MODES.names():
        bank = DiscriminatorBank(3, PATCH, mode=m)
        bank.load_state_dict(loop.state_dict())
        torch.testing.assert_close(bank(x), expected, rtol=1e-4, atol=1e-5)
    assert expected.shape == (3, 2, 1, 2, 2)  # 32 px -> 2x2 score map
    with pytest.raises(ValueError, match=r"\(N=3, b, C, H, W\)"):
        loop(x[:2])


def test_bank_falls_back_to_loop_for_batch_norm_and_rejects_unknown_modes(caplog):
    for m in ("grouped", "vmap"):
        bank = DiscriminatorBank(2, {**PATCH, "norm": "batch"}, mode=m)
        assert bank.mode == "loop" and bank.requested_mode == m
    assert "batch norm" in caplog.text
    assert DiscriminatorBank(2, PATCH).mode in BANK_MODES.names()  # auto resolves to a registered mode
    with pytest.raises(KeyError, match="available: grouped, loop, vmap"):
        DiscriminatorBank(2, PATCH, mode="threads")


# ---------------------------------------------------------------------------------------------- (4)


def test_patchgan_receptive_field_is_70():
    assert receptive_field(3) == 70
    D = PatchGAN(channels=1, ndf=4, n_layers=3, norm="none")
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    # walked back from the instantiated layers' own kernel sizes and strides
    r = 1
    for conv in reversed(convs):
        r = (r - 1) * conv.stride[0] + conv.kernel_size[0]
    assert r == 70 and len(convs) == 5
    # and measured: with positive weights (no cancellation; LeakyReLU's slope is never 0) the input
    # gradient of one central score is non-zero exactly on its receptive field
    with torch.no_grad():
        for conv in convs:
            conv.weight.uniform_(0.1, 1.0)
    x = torch.zeros(1, 1, 160, 160, requires_grad=True)
    scores = D(x)
    h, w = scores.shape[-2:]
    scores[0, 0, h // 2, w // 2].backward()
    support = x.grad[0, 0].abs() > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert rows[-1] - rows[0] + 1 == 70 and cols[-1] - cols[0] + 1 == 70


# ---------------------------------------------------------------------------------------------- (5)


class _AreaDataset:
    """Images whose bright area is known: image i has areas[i] pixels at 0.8 on a black background."""

    def __init__(self, areas, rows=None, size=16):
        self.images = torch.zeros(len(areas), 1, size, size)
        for i, a in enumerate(areas):
            self.images[i].view(-1)[:a] = 0.8
        self.rows = rows

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_shards_by_computed_breast_area_put_each_image_in_one_shard():
    areas = [40, 10, 90, 70, 20, 60, 30, 80, 50]  # image i's rank by area decides its shard
    shards = make_shards(_AreaDataset(areas), 3)  # no manifest: the default falls back to the computed area
    assert isinstance(shards, Shards) and "computed breast_area" in shards.by
    flat = sorted(i for ix in shards.indices for i in ix)
    assert flat == list(range(len(areas)))  # every image exactly once
    assert shards.pi == pytest.approx([1 / 3] * 3) and sum(shards.pi) == pytest.approx(1.0)
    by_area = sorted(range(len(areas)), key=lambda i: areas[i])
    assert shards.indices == [sorted(by_area[0:3]), sorted(by_area[3:6]), sorted(by_area[6:9])]
    # 10 images in 4 shards: sizes 3, 2, 3, 2 (rank * 4 // 10), still each once and pi the fractions
    uneven = make_shards(_AreaDataset(list(range(1, 11))), 4, ShardBy(computed="breast_area"))
    assert uneven.sizes == [3, 2, 3, 2] and uneven.pi == pytest.approx([0.3, 0.2, 0.3, 0.2])
    assert shard_weights([1, 3]) == [0.25, 0.75]


def _rows(values, column="breast_area", **extra):
    return [{"item_id": item, column: str(v), **{k: str(vs[i]) for k, vs in extra.items()}} for i, (item, v) in enumerate(values)]


def test_shards_by_manifest_column_with_ties_and_manifest_shard():
    values = [("a", 5), ("b", 5), ("c", 5), ("d", 5), ("e", 1), ("f", 9)]
    ds = _AreaDataset([1] * 6, rows=_rows(values, shard=[2, 0, 1, 0, 1, 2]))
    # by (value, item id): e(1) a b c d (5) f(9) -> shards {e, a}, {b, c}, {d, f}: the tie at 5 is split by id
    shards = make_shards(ds, 3)
    assert shards.indices == [[0, 4], [1, 2], [3, 5]] and shards.by == "manifest column breast_area"
    assert make_shards(ds, 3, ShardBy(manifest_shard=True)).indices == [[1, 3], [2, 4], [0, 5]]
    with pytest.raises(ValueError, match=r"no such manifest column; columns are \['breast_area', 'item_id', 'shard'\]"):
        make_shards(ds, 3, ShardBy(column="density"))
    # categorical column with two values in three shards: shard 2 is empty
    cat = _AreaDataset([1] * 4, rows=_rows([("a", "x"), ("b", "y"), ("c", "x"), ("d", "y")], column="site"))
    assert make_shards(cat, 2, ShardBy(column="site")).indices == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match=r"shard 2 of 3 is empty.*use a smaller n \(at most 2\)"):
        make_shards(cat, 3, ShardBy(column="site"))


def test_shard_by_options_are_exclusive():
    assert ShardBy().column == "breast_area"
    # a saved config reloads to the same rule, including the fallback for datasets without a manifest
    again = ShardBy.model_validate(ShardBy().model_dump())
    assert again == ShardBy() and make_shards(_AreaDataset([3, 1, 2, 4]), 2, again).indices == [[1, 2], [0, 3]]
    with pytest.raises(ValueError, match="no manifest rows"):
        make_shards(_AreaDataset([3, 1, 2, 4]), 2, ShardBy(column="density"))
    with pytest.raises(ValueError, match="exactly one of"):
        ShardBy(column="breast_area", computed="breast_area")
    with pytest.raises(ValueError, match="extra"):
        ShardBy(columns="x")


@pytest.mark.parametrize("body,message", [
    ("item_id,shard\na,0\nb,1\n", r"1 item\(s\) of the dataset have no row, e.g. item_id 'c'"),
    ("item_id,shard\na,0\nb,1\na,1\nc,0\n", r"row 4: item_id 'a' appears twice \(first at row 2\)"),
    ("item_id,shard\na,0\nb,2\nc,0\n", r"row 3 \(item 'b'\): shard 2 out of range; expected 0..1"),
    ("item_id,shard\na,0\nz,1\nc,0\n", r"row 3: unknown item_id 'z'"),
    ("item_id,shard\na,0\nb,one\nc,0\n", r"row 3 \(item 'b'\): shard 'one' is not an integer"),
    ("item,shard\na,0\n", r"header must have columns item_id,shard"),
])
def test_shard_file_errors_name_the_file_and_row(tmp_path, body, message):
    path = tmp_path / "sites.csv"
    path.write_text(body)
    ds = _AreaDataset([1, 2, 3], rows=_rows([("a", 1), ("b", 2), ("c", 3)]))
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + ": " + message):
        make_shards(ds, 2, ShardBy(file=path))


def test_shard_file_assigns_items(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("item_id,shard\nc,0\na,1\nb,0\n")
    ds = _AreaDataset([1, 2, 3], rows=_rows([("a", 1), ("b", 2), ("c", 3)]))
    shards = make_shards(ds, 2, ShardBy(file=path))
    assert shards.indices == [[1, 2], [0]] and shards.pi == pytest.approx([2 / 3, 1 / 3])
    # a dataset without a manifest names its items by index
    path.write_text("item_id,shard\n0,1\n1,0\n2,1\n")
    assert make_shards(_AreaDataset([1, 2, 3]), 2, ShardBy(file=path)).indices == [[1], [0, 2]]


# ---------------------------------------------------------------------------------------------- (6)


@pytest.mark.parametrize("mode", ["loop", "grouped"])
def test_bank_is_dropout_free_and_deterministic_with_a_seed(mode):
    def run(seed: int):
        torch.manual_seed(seed)
        bank = DiscriminatorBank(2, PATCH, mode=mode)
        assert not any(isinstance(m, nn.Dropout) for m in bank.modules())
        opt = adam(bank.parameters())
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(2):
            out.append(bank.update(opt, LOSSES.build("lsgan", {}), images(g, 2, 1, 1, SIZE, SIZE), images(g, 2, 1, 1, SIZE, SIZE)))
        return out, bank.state_dict()

    (a, sa), (b, sb), (c, _) = run(9), run(9), run(10)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a[0][2], c[0][2])
    areas = [5, 3, 8, 1, 9, 2]
    assert make_shards(_AreaDataset(areas), 2) == make_shards(_AreaDataset(areas), 2)
