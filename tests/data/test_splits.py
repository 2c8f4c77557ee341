"""Split rules: patients and near-duplicate groups never straddle splits; stratified; deterministic."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from breastgan.data.splits import SplitItem, assign_shards, assign_splits, near_duplicate_groups, reduced_training_subset

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def items(n_patients=200, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = ["normal", "benign", "malignant"][p % 3]
        for k in range(int(rng.integers(1, 4))):
            out.append(SplitItem(f"p{p}_i{k}", f"p{p}", label, group=f"g{p // 10}" if p % 17 == 0 else None))
    return out


def test_patients_and_groups_in_one_split_and_fractions_close():
    its = items()
    s = assign_splits(its, FRACTIONS, seed=3)
    by_patient, by_group = defaultdict(set), defaultdict(set)
    for it in its:
        by_patient[it.patient_id].add(s[it.item_id])
        if it.group:
            by_group[it.group].add(s[it.item_id])
    assert all(len(v) == 1 for v in by_patient.values()) and all(len(v) == 1 for v in by_group.values())
    for label in ("normal", "benign", "malignant"):
        counts = Counter(s[it.item_id] for it in its if it.label == label)
        total = sum(counts.values())
        for split, f in FRACTIONS.items():
            assert abs(counts[split] / total - f) < 0.05, (label, counts)


def test_deterministic_and_seed_dependent():
    its = items()
    assert assign_splits(its, FRACTIONS, 1) == assign_splits(list(its), FRACTIONS, 1)
    assert assign_splits(its, FRACTIONS, 1) != assign_splits(its, FRACTIONS, 2)


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(items(5), {"train": 0.8, "test": 0.3})


def test_reduced_training_subset_halves_training_patients():
    its = items(300)
    s = assign_splits(its, FRACTIONS, 0)
    sub = reduced_training_subset(its, s, 0.5, seed=0)
    train_patients = {it.patient_id for it in its if s[it.item_id] == "train"}
    sub_patients = {it.patient_id for it in its if it.item_id in sub}
    assert sub_patients <= train_patients
    assert abs(len(sub_patients) / len(train_patients) - 0.5) < 0.06
    for it in its:  # whole patients only
        if it.patient_id in sub_patients:
            assert it.item_id in sub
    assert reduced_training_subset(its, s, 1.0) == {it.item_id for it in its if s[it.item_id] == "train"}


def test_shards_by_numeric_and_categorical_column():
    values = {f"i{k}": float(k) for k in range(100)}
    shards = assign_shards(values, 4)
    assert Counter(shards.values()) == {0: 25, 1: 25, 2: 25, 3: 25}
    assert shards["i0"] == 0 and shards["i99"] == 3
    cat = assign_shards({"a": "F", "b": "G", "c": "D", "d": "F"}, 2)
    assert cat["a"] == cat["d"] and len(set(cat.values())) == 2


def test_near_duplicate_groups_by_hash_and_correlation():
    ids = ["a", "b", "c", "d", "e"]
    hashes = np.array([0b0, 0b111, 0xFFFF_0000_0000_0000, 0xFFFF_0000_0000_0001, 0x0F0F_0F0F_0F0F_0F0F], dtype=np.uint64)
    g = near_duplicate_groups(ids, hashes, None, max_hamming=3)
    assert g["a"] == g["b"] == "a" and g["c"] == g["d"] == "c" and "e" not in g
    rng = np.random.default_rng(0)
    base = rng.random(1024)
    thumbs = np.stack([base, base * 2 + 0.01 * rng.random(1024), rng.random(1024), rng.random(1024), rng.random(1024)])
    g = near_duplicate_groups(ids, None, thumbs, min_correlation=0.97)
    assert g == {"a": "a", "b": "a"}
