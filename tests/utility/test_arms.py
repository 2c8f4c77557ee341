"""Arm composition and class balancing (methods.md section 4)."""

import pytest
import torch

from breastgan.utility.arms import SyntheticArm, compose, sample_synthetic, shares_to_counts
from breastgan.utility.data import pool_to_set, synthetic_to_set


def _fake(n, label=1, size=16):
    return synthetic_to_set(torch.rand(n, 1, size, size), label, size, "synthetic:g")


def test_none_arm_is_balanced_and_uses_the_whole_minority_class(make_pool):
    base = make_pool({0: 50, 1: 20})
    train, comp = compose(base, [], add_label=1, balance=True, order_seed=0, size=16)
    assert comp["by_class"] == {"0": 20, "1": 20}
    assert comp["by_source"] == {"A": 40}


def test_added_images_are_matched_by_real_images_of_the_other_class(make_pool):
    base = make_pool({0: 50, 1: 20})
    none, _ = compose(base, [], add_label=1, balance=True, order_seed=0, size=16)
    train, comp = compose(base, [_fake(12)], add_label=1, balance=True, order_seed=0, size=16)
    assert comp["by_class"] == {"0": 32, "1": 32}
    assert comp["by_source"] == {"A": 52, "synthetic:g": 12}
    assert set(none.items) <= set(train.items)  # the 'none' arm's real images are inside every arm


def test_balancing_shortage_is_an_error_or_recorded(make_pool):
    base = make_pool({0: 25, 1: 20})
    with pytest.raises(ValueError, match="needs 30 real images of class 0 .* has 25"):
        compose(base, [_fake(10)], add_label=1, balance=True, order_seed=0, size=16)
    train, comp = compose(base, [_fake(10)], add_label=1, balance=True, order_seed=0, size=16, on_shortage="allow_imbalance")
    assert comp["by_class"] == {"0": 25, "1": 30} and comp["notes"]


def test_unbalanced_mode_keeps_all_real_images(make_pool):
    base = make_pool({0: 50, 1: 20})
    train, comp = compose(base, [_fake(30)], add_label=1, balance=False, order_seed=0, size=16)
    assert comp["by_class"] == {"0": 50, "1": 50}


def test_added_images_with_the_wrong_label_are_refused(make_pool):
    with pytest.raises(ValueError, match="added class"):
        compose(make_pool({0: 10, 1: 10}), [_fake(3, label=0)], add_label=1, balance=True, order_seed=0, size=16)


@pytest.mark.parametrize("n,shares,expected", [(10, [1, 1], [5, 5]), (11, [1, 1], [6, 5]), (7, [1], [7]), (10, [3, 1], [8, 2])])
def test_shares_to_counts(n, shares, expected):
    assert shares_to_counts(n, shares) == expected


def test_two_generators_contribute_half_each(tiny_generators, make_pool):
    arm = SyntheticArm(kind="synthetic", name="Both", generators=[{"source": g} for g in tiny_generators])
    parts = sample_synthetic(arm, 9, seed=0)
    assert [len(x) for _, x in parts] == [5, 4]
    assert len({tag for tag, _ in parts}) == 2
    added = [synthetic_to_set(x, 1, 16, tag) for tag, x in parts]
    train, comp = compose(make_pool({0: 40, 1: 10}), added, add_label=1, balance=True, order_seed=0, size=16)
    assert sorted(comp["by_source"].values()) == [4, 5, 29]


def test_real_arm_images_go_through_the_same_path(make_pool):
    other = make_pool({1: 8}, source="B")
    added = pool_to_set(other, 16, source="real:B")
    train, comp = compose(make_pool({0: 30, 1: 10}), [added], add_label=1, balance=True, order_seed=0, size=16)
    assert comp["by_source"] == {"A": 28, "real:B": 8}
    assert comp["by_class"] == {"0": 18, "1": 18}


def test_composition_records_intensity_per_source(make_pool):
    flat = synthetic_to_set(torch.full((6, 1, 16, 16), 0.4), 1, 16, "synthetic:flat")
    _, comp = compose(make_pool({0: 30, 1: 10}), [flat], add_label=1, balance=True, order_seed=0, size=16)
    assert comp["intensity"]["synthetic:flat"] == {"mean": 0.4, "within_image_std": 0.0}
    assert comp["intensity"]["A"]["within_image_std"] > 0.2  # uniform noise images
