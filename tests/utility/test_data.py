"""Centres, patient-level subsets, training fractions and pitfall 4 (one preprocessing path, one value range)."""

import csv

import numpy as np
import pytest
import torch

from breastgan.data.io import write_image
from breastgan.utility.arms import SyntheticArm, sample_synthetic
from breastgan.utility.data import (
    PatientPart,
    PhantomCentre,
    PreparedCentre,
    check_range,
    load_centre,
    pool_to_set,
    synthetic_to_set,
    to_input,
    training_fraction,
)


def _prepared(tmp_path, n_patients=12, per_patient=3):
    """A prepared-dataset folder written by hand: manifest.csv + 16-bit PNGs."""
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "images").mkdir(parents=True)
    for p in range(n_patients):
        for k in range(per_patient):
            item = f"p{p}_{k}"
            label = ["healthy", "lesion", "normal"][(p + k) % 3]
            split = "train" if p < 8 else ("val" if p < 10 else "test")
            write_image(tmp_path / "images" / f"{item}.png", rng.random((32, 32)).astype(np.float32), bit_depth=16)
            rows.append({"item_id": item, "file": f"images/{item}.png", "label": label, "split": split, "patient_id": f"P{p}", "group": ""})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path


def test_prepared_centre_keeps_classes_patients_and_manifest_split(tmp_path):
    path = _prepared(tmp_path)
    pool = load_centre(PreparedCentre(dataset="prepared", path=path), ["healthy", "lesion"], "A")
    assert len(pool) == 24  # 'normal' images dropped, with a note
    assert any("normal" in n for n in pool.notes)
    assert set(pool.splits) == {"train", "val", "test"}
    assert {pool.patients[i] for i, s in enumerate(pool.splits) if s == "test"} == {"P10", "P11"}


def test_patient_level_centres_are_disjoint_and_cover_the_dataset(tmp_path):
    path = _prepared(tmp_path)
    parts = {"A": 0.5, "B": 0.5}
    a = load_centre(PreparedCentre(dataset="prepared", path=path, patients=PatientPart(parts=parts, take="A")), ["healthy", "lesion"], "A")
    b = load_centre(PreparedCentre(dataset="prepared", path=path, patients=PatientPart(parts=parts, take="B")), ["healthy", "lesion"], "B")
    assert set(a.patients).isdisjoint(b.patients)
    assert len(a) + len(b) == 24 and len(a) > 0 and len(b) > 0


def test_phantom_centre_has_patient_level_splits():
    pool = load_centre(PhantomCentre(dataset="phantom", args={"n": 120, "size": 16, "seed": 1}, images_per_patient=3), ["healthy", "lesion"], "A")
    by_patient = {}
    for p, s in zip(pool.patients, pool.splits):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {"train", "val", "test"} <= set(pool.splits)


def test_training_fraction_subsets_whole_patients_per_class(make_pool):
    pool = make_pool({0: 60, 1: 40}, images_per_patient=2)
    half = training_fraction(pool, 0.5, seed=0, classes=["healthy", "lesion"])
    kept = set(half.patients)
    for p in set(pool.patients):  # no patient is partly kept
        n_all = pool.patients.count(p)
        assert half.patients.count(p) in (0, n_all)
    assert len(kept) == pytest.approx(len(set(pool.patients)) / 2, abs=1)
    assert half.counts(["healthy", "lesion"]) == {"healthy": 30, "lesion": 20}
    assert training_fraction(pool, 0.5, seed=0, classes=["healthy", "lesion"]).items == half.items  # deterministic
    assert len(training_fraction(pool, 1.0, seed=0, classes=["healthy", "lesion"])) == 100


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 1, 8, 8) * 2 - 1, "expected \\[0, 1\\]"),
    (torch.rand(2, 1, 8, 8) * 255, "expected \\[0, 1\\]"),
    (torch.randint(0, 2, (2, 1, 8, 8)), "float"),
    (torch.rand(2, 3, 8, 8), "grey"),
])
def test_value_range_is_enforced(bad, match):
    with pytest.raises(ValueError, match=match):
        check_range(bad, "x")


def test_real_and_synthetic_images_share_one_preprocessing_path(tmp_path):
    """Pitfall 4: the same pixels give the same classifier input whether they come from a centre or a generator."""
    path = _prepared(tmp_path)
    pool = load_centre(PreparedCentre(dataset="prepared", path=path), ["healthy", "lesion"], "A")
    real = pool_to_set(pool, 16)
    fake = synthetic_to_set(pool.images.clone(), 1, 16, "synthetic:g")
    assert torch.equal(real.images, fake.images)
    assert real.images.dtype == fake.images.dtype == torch.float32
    assert real.images.shape[1:] == (1, 16, 16)


def test_generator_samples_land_in_the_same_range_and_shape_as_real(tiny_generators, tmp_path):
    path = _prepared(tmp_path)
    pool = load_centre(PreparedCentre(dataset="prepared", path=path), ["healthy", "lesion"], "A")
    arm = SyntheticArm(kind="synthetic", name="G", generators=[{"source": tiny_generators[0]}])
    [(tag, images)] = sample_synthetic(arm, 6, seed=0)
    fake = synthetic_to_set(images, 1, 16, tag)
    real = pool_to_set(pool, 16)
    assert fake.images.shape[1:] == real.images.shape[1:]
    for s in (fake, real):
        assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    # area resampling is the only change: the mean intensity of each image is preserved
    assert torch.allclose(to_input(images, 16, "g").mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5)


def test_centre_training_source_names_exactly_the_centres_images(tmp_path):
    from breastgan.data.prepared import PreparedDataset
    from breastgan.utility.centre_source import centre_training_source
    from breastgan.utility.experiment import load_experiment_config

    path = _prepared(tmp_path / "prep")
    part = {"parts": {"A": 0.5, "B": 0.5}, "seed": 0}
    cfg = load_experiment_config({
        "name": "x", "classes": ["healthy", "lesion"], "receiving": "A", "arms": [{"kind": "none"}],
        "centres": {c: {"dataset": "prepared", "path": str(path), "patients": {**part, "take": c}} for c in "AB"},
    })
    src = centre_training_source(cfg, "B", label="lesion")
    ds = PreparedDataset(**{k: v for k, v in src.items() if k != "dataset"})
    b = load_centre(cfg.centres["B"], ["healthy", "lesion"], "B")
    expected = sorted(i for i, lab in zip(b.items, b.labels) if int(lab) == 1)
    assert sorted(r["item_id"] for r in ds.rows) == expected and expected
    a = load_centre(cfg.centres["A"], ["healthy", "lesion"], "A")
    assert not {r["patient_id"] for r in ds.rows} & set(a.patients)
