"""Patch geometry rules (methods.md section 3) as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breastgan.data.patches import (
    FloatBox,
    PatchError,
    background_fraction,
    box_from_circle,
    box_from_contour,
    box_from_mask,
    jitter_box,
    lesion_patch_box,
    rasterise_annotation,
    render_patch,
    sample_healthy_boxes,
    scaled_margin,
)
from breastgan.data.preprocess import Box


def test_boxes_from_every_annotation_kind():
    m = np.zeros((50, 60), bool)
    m[10:20, 30:45] = True
    assert box_from_mask(m) == FloatBox(30, 10, 45, 20)
    assert box_from_contour([(30, 10), (44, 10), (44, 19), (30, 19)]) == FloatBox(30, 10, 45, 20)
    assert box_from_circle(100, 50, 10) == FloatBox(90, 40, 110, 60)
    with pytest.raises(PatchError, match="empty"):
        box_from_mask(np.zeros((5, 5), bool))


def test_lesion_patch_is_centred_square_with_margin():
    box = lesion_patch_box(FloatBox(400, 500, 480, 540), (1024, 1024), margin_px=60, min_side=128)
    assert box.width == box.height == 80 + 120
    assert ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2) == (440, 520)


def test_small_lesion_gets_minimum_side_and_border_shift():
    box = lesion_patch_box(FloatBox(2, 3, 6, 8), (300, 200), margin_px=10, min_side=128)
    assert box == Box(0, 0, 128, 128)  # shifted inside, not cropped
    box = lesion_patch_box(FloatBox(190, 290, 199, 299), (300, 200), margin_px=10, min_side=128)
    assert box == Box(72, 172, 200, 300)


def test_lesion_outside_image_is_an_error():
    with pytest.raises(PatchError, match="outside"):
        lesion_patch_box(FloatBox(1100, 10, 1120, 30), (1024, 1024))


def test_margin_scales_with_pixel_spacing():
    assert scaled_margin(60, 0.07, 0.07) == 60
    assert scaled_margin(60, 0.14, 0.07) == pytest.approx(30)
    assert scaled_margin(60, None, 0.07) == 60


def test_healthy_boxes_obey_background_rule():
    breast = np.zeros((300, 300), bool)
    breast[:, :150] = True
    rng = np.random.default_rng(0)
    boxes = sample_healthy_boxes(breast, 100, 30, rng, max_background=0.4)
    assert len(boxes) == 30 and len(set(boxes)) == 30
    assert all(background_fraction(breast, b) <= 0.4 for b in boxes)
    assert min(b.x0 for b in boxes) < 20 and max(b.x0 for b in boxes) > 80  # uniform over the valid range
    with pytest.raises(PatchError, match="at most 40% background"):
        sample_healthy_boxes(np.zeros((300, 300), bool), 100, 1, rng)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), x=st.integers(0, 900), y=st.integers(0, 900), r=st.integers(1, 60))
def test_jitter_keeps_lesion_inside_patch_and_image(seed, x, y, r):
    hw = (1024, 1024)
    lesion = box_from_circle(x + 0.5, y + 0.5, r)
    lesion = FloatBox(max(lesion.x0, 0), max(lesion.y0, 0), min(lesion.x1, 1024), min(lesion.y1, 1024))
    box = lesion_patch_box(lesion, hw, 60, 128)
    j = jitter_box(box, hw, np.random.default_rng(seed), zoom_std=0.2, shift_std=0.2, keep=lesion)
    assert 0 <= j.x0 and 0 <= j.y0 and j.x1 <= 1024 and j.y1 <= 1024
    assert j.x0 <= lesion.x0 + 1 and j.y0 <= lesion.y0 + 1 and j.x1 >= lesion.x1 - 1 and j.y1 >= lesion.y1 - 1


def test_jitter_has_no_directional_bias():
    rng = np.random.default_rng(0)
    box = Box(400, 400, 600, 600)
    centres = np.array([[(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2] for b in (jitter_box(box, (1024, 1024), rng, 0.1, 0.1) for _ in range(2000))])
    assert np.abs(centres.mean(axis=0) - 500).max() < 2.0  # zero-mean shifts: ~0.45 px standard error


def test_render_uses_area_interpolation_and_keeps_aspect():
    img = np.zeros((400, 400), np.float32)
    img[0:256:2, :] = 1.0  # 1-pixel stripes: area averaging gives exactly 0.5
    out = render_patch(img, Box(0, 0, 256, 256), 128)
    assert out.shape == (128, 128) and np.allclose(out, 0.5)
    short = render_patch(np.ones((100, 300), np.float32), Box(0, 0, 200, 100), 128)  # cut by the border
    assert np.allclose(short[:64], 1.0) and np.allclose(short[64:], 0.0)  # padded, not stretched


def test_rasterise_annotations():
    c = rasterise_annotation("circle", (50, 50), centre=(25.5, 25.5), radius=5)
    assert c[25, 25] and not c[25, 35] and abs(c.sum() - np.pi * 25) < 10
    b = rasterise_annotation("box", (50, 50), box=(10, 20, 15, 30))
    assert b.sum() == 50
    p = rasterise_annotation("contour", (50, 50), points=[(5, 5), (20, 5), (20, 20), (5, 20)])
    assert p[10, 10] and not p[30, 30]
