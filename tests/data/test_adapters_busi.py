"""BUSI adapter on the real data: OR-ed and RGBA masks, the exact cross-class duplicate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from breastgan.data.adapters import ADAPTERS, default_data_root
from breastgan.data.adapters.readers import read_mask
from breastgan.data.prepare import preflight_record, load_config, union_mask

ROOT = default_data_root() / "busi"


@pytest.fixture(scope="module")
def listing():
    if not (ROOT / "benign").is_dir():
        pytest.skip(f"BUSI not found at {ROOT} (set BREASTGAN_DATA)")
    return ADAPTERS.build("busi", {"root": str(ROOT)})


def test_counts_and_multi_mask_images(listing):
    recs = {r.image_id: r for r in listing.records}
    assert Counter(r.label for r in recs.values()) == {"benign": 437, "malignant": 210, "normal": 133}
    assert not listing.problems and listing.near_duplicate_grouping
    multi = sorted(i for i, r in recs.items() if r.annotations and len(r.annotations[0].mask_files) > 1)
    assert len(multi) == 17 and "malignant_053" in multi
    assert len(recs["benign_195"].annotations[0].mask_files) == 3
    assert all(not r.annotations for r in recs.values() if r.label == "normal")


def test_masks_are_or_ed_and_rgba_flattened(listing):
    rec = {r.image_id: r for r in listing.records}["benign_004"]
    ann = rec.annotations[0]
    parts = [read_mask(f) for f in ann.mask_files]
    assert any(p.notes and "RGBA" in p.notes[0] for p in parts)  # benign (4)_mask_1.png is RGBA
    union = union_mask(ann, parts[0].mask.shape)
    np.testing.assert_array_equal(union, np.logical_or.reduce([p.mask for p in parts]))
    assert union.sum() > max(p.mask.sum() for p in parts)  # the second mask adds a separate lesion


def test_rgba_mask_is_a_recorded_warning_in_preflight(listing):
    rec = {r.image_id: r for r in listing.records}["benign_054"]
    cfg = load_config(raw={"dataset": {"adapter": "busi", "args": {"root": str(ROOT)}}, "output": "/unused", "task": {"name": "images"}})
    res = preflight_record(rec, cfg, want_hash=False)
    assert res.status == "warning" and any("RGBA" in n for n in res.notes)


def test_exact_cross_class_duplicate_is_byte_identical(listing):
    recs = {r.image_id: r for r in listing.records}
    a, b = recs["benign_433"].source, recs["malignant_145"].source
    assert open(a, "rb").read() == open(b, "rb").read()
