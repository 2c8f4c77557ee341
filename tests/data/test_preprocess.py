"""Breast segmentation, laterality, resize/pad and random crops on synthetic phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from breastgan.data.preprocess import (
    Box,
    chest_wall_side,
    clahe,
    fit_placement,
    flip_box,
    mask_bbox,
    needs_flip,
    random_breast_crops,
    resize_pad,
    segment_breast,
    window_sums,
)


def phantom(h=200, w=160, chest_wall="left"):
    """A half-disc 'breast' against one side, plus a bright label blob in a corner."""
    yy, xx = np.mgrid[:h, :w]
    cx = 0 if chest_wall == "left" else w - 1
    breast = (xx - cx) ** 2 + (yy - h / 2) ** 2 < (0.45 * h) ** 2
    img = np.where(breast, 0.5 + 0.1 * np.sin(xx / 5.0), 0.02).astype(np.float32)
    lx = w - 20 if chest_wall == "left" else 5
    img[5:15, lx : lx + 12] = 1.0  # burned-in label, not connected to the breast
    return img, breast


def test_segmentation_keeps_breast_and_drops_label():
    img, breast = phantom()
    mask = segment_breast(img)
    assert not mask[5:15, 140:152].any()  # label removed
    inter = (mask & breast).sum() / breast.sum()
    assert inter > 0.97 and (mask & ~breast).sum() / breast.sum() < 0.03


def test_segmentation_fills_dark_holes_inside_the_breast():
    img, breast = phantom()
    img[95:105, 20:30] = 0.0
    assert segment_breast(img)[100, 25]


def test_chest_wall_side_and_flip():
    img, _ = phantom(chest_wall="right")
    mask = segment_breast(img)
    assert chest_wall_side(mask) == "right" and needs_flip(mask, "left")
    assert chest_wall_side(mask[:, ::-1]) == "left"
    assert flip_box(Box(10, 5, 30, 25), 160) == Box(130, 5, 150, 25)


def test_resize_pad_keeps_aspect_and_pads_with_zeros():
    img = np.ones((100, 50), np.float32)
    out, place = resize_pad(img, (80, 80))
    assert out.shape == (80, 80) and place.scale == pytest.approx(0.8) and place.size_hw == (80, 40)
    assert out[:, :40].min() == 1.0 and out[:, 40:].max() == 0.0
    centred = fit_placement((100, 50), (80, 80), pad="centre")
    assert (centred.offset_x, centred.offset_y) == (20, 0)
    assert place.map_xy(50, 100) == (40.0, 80.0)


def test_window_sums_match_brute_force():
    rng = np.random.default_rng(0)
    m = rng.random((30, 25)) > 0.5
    ws = window_sums(m, 7)
    assert ws.shape == (24, 19)
    assert ws[3, 11] == m[3:10, 11:18].sum() and ws[23, 18] == m[23:30, 18:25].sum()


def test_random_crops_keep_the_breast_inside():
    img, breast = phantom(400, 300)
    mask = segment_breast(img)
    boxes = random_breast_crops(mask, 64, 20, np.random.default_rng(1), min_breast_fraction=0.9)
    assert len(boxes) == 20 and len(set(boxes)) > 5
    for b in boxes:
        assert mask[b.y0 : b.y1, b.x0 : b.x1].mean() >= 0.9
    with pytest.raises(ValueError, match="breast pixels"):
        random_breast_crops(np.zeros((100, 100), bool), 32, 1, np.random.default_rng(0))


def test_clahe_stays_in_range_and_changes_contrast():
    img, _ = phantom()
    out = clahe(img * 0.3)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert out.std() > (img * 0.3).std()
    assert mask_bbox(np.pad(np.ones((3, 4), bool), 2)) == Box(2, 2, 6, 5)
