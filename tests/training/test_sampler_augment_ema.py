import pytest
import torch

from breastgan.training.augment import DiffAugment, random_flips
from breastgan.training.ema import EMA
from breastgan.training.sampler import EpochBatchPlan


def test_plan_union_over_ranks_equals_single_process():
    single = EpochBatchPlan(100, 8, 1, 0, seed=5)
    ranks = [EpochBatchPlan(100, 4, 2, r, seed=5) for r in range(2)]
    for epoch in range(2):
        for b in range(single.batches_per_epoch):
            both = torch.cat([p.indices(epoch, b) for p in ranks])
            assert torch.equal(both, single.indices(epoch, b))


def test_plan_epochs_are_permutations_and_differ():
    p = EpochBatchPlan(64, 16, 1, 0, seed=1)
    e0 = torch.cat([p.indices(0, b) for b in range(p.batches_per_epoch)])
    e1 = torch.cat([p.indices(1, b) for b in range(p.batches_per_epoch)])
    assert sorted(e0.tolist()) == list(range(64)) and not torch.equal(e0, e1)


def test_plan_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        EpochBatchPlan(10, 8, 2, 0, seed=0)


def test_flips_follow_the_draws():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    u = torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    y = random_flips(x, u, True, True)
    assert torch.equal(y[0], x[0].flip(-1))
    assert torch.equal(y[1], x[1].flip(-2))


def test_diffaugment_translation_matches_shift_with_zero_fill():
    aug = DiffAugment(["translation"], translation=0.25)
    x = torch.arange(64.0).view(1, 1, 8, 8) + 1
    u = torch.zeros(1, DiffAugment.N_RANDOM)
    u[0, 2] = 0.99  # tx = +2
    u[0, 3] = 0.0  # ty = -2
    y = aug(x, u)
    expected = torch.zeros_like(x)
    expected[..., 0:6, 2:8] = x[..., 2:8, 0:6]
    assert torch.equal(y, expected)


def test_diffaugment_cutout_area_and_gradients():
    aug = DiffAugment(["cutout"], cutout=0.5)
    x = torch.ones(4, 1, 16, 16, requires_grad=True)
    y = aug(x, torch.rand(4, DiffAugment.N_RANDOM, generator=torch.Generator().manual_seed(0)))
    zeros = (y == 0).flatten(1).sum(1)
    assert torch.all(zeros > 0) and torch.all(zeros <= 81)  # at most a 9x9 square
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float())


def test_ema_tracks_weights():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.add_(2.0)
    before = ema.model.weight.clone()
    ema.update(m, step=100)  # past the warm-up: (1 + 100) / (10 + 100) > 0.5, so the decay is 0.5
    assert torch.allclose(ema.model.weight, 0.5 * before + 0.5 * m.weight)
    # warm-up: early updates follow the model closely instead of keeping the initialisation
    slow = EMA(m, decay=0.999)
    assert slow.decay_at(0) == pytest.approx(0.1) and slow.decay_at(90) == pytest.approx(0.91)
    assert slow.decay_at(100_000) == 0.999
    ema_copy = EMA(m, decay=0.9, start_step=10)
    ema_copy.update(m, step=3)  # before start_step: plain copy
    assert torch.equal(ema_copy.model.weight, m.weight)
