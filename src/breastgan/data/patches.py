"""Lesion and healthy patches, following the model-sharing study (methods.md section 3).

Lesion patch: bounding box of the lesion (from a mask, contour, box or centre + radius), a square
around it with a 60 px margin on each side (scaled when the pixel spacing differs from the
reference), at least 128 px, translated to lie inside the image. Healthy patch: a random square
with at most 40 % background pixels. Both classes then go through one pipeline: optional zoom and
translation jitter drawn from zero-mean normal distributions (no directional bias), then a resize to
128x128 with area interpolation; squares keep the aspect ratio.

Geometry is pure (boxes in, boxes out); :func:`render_patch` is the only function touching pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from breastgan.data.preprocess import Box, window_sums


class PatchError(ValueError):
    """A patch cannot be placed as the rules require; the message says which rule failed."""


@dataclass(frozen=True)
class FloatBox:
    """Continuous box (x0, y0, x1, y1), pixel i covering [i, i + 1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def box_from_mask(mask: np.ndarray) -> FloatBox:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PatchError("lesion mask is empty")
    return FloatBox(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def box_from_contour(points: np.ndarray | tuple) -> FloatBox:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] == 0:
        raise PatchError("lesion contour has no points")
    # contour vertices are pixel indices: the pixel of the last vertex is included
    return FloatBox(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max() + 1), float(pts[:, 1].max() + 1))


def box_from_circle(cx: float, cy: float, radius: float) -> FloatBox:
    if radius < 0:
        raise PatchError(f"lesion radius {radius} is negative")
    return FloatBox(cx - radius, cy - radius, cx + radius, cy + radius)


def check_inside(box: FloatBox, image_hw: tuple[int, int], what: str = "lesion") -> None:
    h, w = image_hw
    if box.x1 <= 0 or box.y1 <= 0 or box.x0 >= w or box.y0 >= h:
        raise PatchError(f"{what} box ({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}) lies outside the {h}x{w} image")


def scaled_margin(margin_px: float, spacing_mm: float | None, reference_spacing_mm: float | None) -> float:
    """The margin is physical: 60 px at the reference spacing is 60 * ref / spacing px here."""
    if spacing_mm is None or reference_spacing_mm is None or spacing_mm <= 0:
        return float(margin_px)
    return float(margin_px) * reference_spacing_mm / spacing_mm


def place_square(cx: float, cy: float, side: int, image_hw: tuple[int, int]) -> Box:
    """A side x side box centred on (cx, cy), translated to lie inside the image.

    When the image is smaller than ``side`` in one dimension, the box spans that dimension
    (and the render step zero-pads it back to a square, keeping the aspect ratio).
    """
    h, w = image_hw
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x0 = min(max(x0, 0), max(w - side, 0))
    y0 = min(max(y0, 0), max(h - side, 0))
    return Box(x0, y0, min(x0 + side, w), min(y0 + side, h))


def lesion_patch_side(lesion: FloatBox, margin_px: float, min_side: int = 128) -> int:
    side = max(lesion.x1 - lesion.x0, lesion.y1 - lesion.y0) + 2 * margin_px
    return max(int(math.ceil(side)), min_side)


def lesion_patch_box(
    lesion: FloatBox,
    image_hw: tuple[int, int],
    margin_px: float = 60.0,
    min_side: int = 128,
) -> Box:
    check_inside(lesion, image_hw)
    cx, cy = lesion.centre
    return place_square(cx, cy, lesion_patch_side(lesion, margin_px, min_side), image_hw)


def jitter_box(box: Box, image_hw: tuple[int, int], rng: np.random.Generator, zoom_std: float, shift_std: float, keep: FloatBox | None = None) -> Box:
    """Zoom by exp(N(0, zoom_std)) and shift by N(0, shift_std * side) in x and y.

    Log-normal zoom and zero-mean shifts have no preferred direction. With ``keep`` (the lesion),
    the shift is clipped so the lesion stays inside the patch.
    """
    side = box.width if box.width == box.height else max(box.width, box.height)
    new_side = max(8, int(round(side * math.exp(rng.normal(0.0, zoom_std))))) if zoom_std > 0 else side
    cx = (box.x0 + box.x1) / 2 + (rng.normal(0.0, shift_std * side) if shift_std > 0 else 0.0)
    cy = (box.y0 + box.y1) / 2 + (rng.normal(0.0, shift_std * side) if shift_std > 0 else 0.0)
    if keep is not None:
        new_side = max(new_side, int(math.ceil(max(keep.x1 - keep.x0, keep.y1 - keep.y0))))
        half = new_side / 2
        cx = min(max(cx, keep.x1 - half), keep.x0 + half)
        cy = min(max(cy, keep.y1 - half), keep.y0 + half)
    return place_square(cx, cy, new_side, image_hw)


def background_fraction(breast_mask: np.ndarray, box: Box) -> float:
    sub = breast_mask[box.y0 : box.y1, box.x0 : box.x1]
    return 1.0 - float(sub.mean()) if sub.size else 1.0


def sample_healthy_boxes(
    breast_mask: np.ndarray,
    side: int,
    n: int,
    rng: np.random.Generator,
    max_background: float = 0.4,
    avoid: np.ndarray | None = None,
) -> list[Box]:
    """``n`` distinct random squares with at most ``max_background`` background (and no ``avoid`` pixels).

    Drawn uniformly among all valid top-left corners (an integral image lists them all at once),
    so there is no bias towards the breast centre or one side.
    """
    h, w = breast_mask.shape
    if side > h or side > w:
        raise PatchError(f"healthy patch side {side} larger than the {h}x{w} image")
    ok = window_sums(breast_mask, side) >= math.ceil((1.0 - max_background) * side * side)
    if avoid is not None and avoid.any():
        ok &= window_sums(avoid, side) == 0
    ys, xs = np.nonzero(ok)
    if ys.size == 0:
        raise PatchError(f"no {side}x{side} box has at most {max_background:.0%} background")
    picks = rng.choice(ys.size, size=min(n, ys.size), replace=False)
    return [Box(int(xs[i]), int(ys[i]), int(xs[i]) + side, int(ys[i]) + side) for i in picks]


def render_patch(img: np.ndarray, box: Box, size: int = 128) -> np.ndarray:
    """Crop ``box`` and resize to size x size with area interpolation, keeping the aspect ratio.

    A box cut short by the image border (only when the image is smaller than the patch side) is
    zero-padded to a square first, so the content is never stretched.
    """
    sub = img[box.y0 : box.y1, box.x0 : box.x1]
    h, w = sub.shape
    if h != w:
        side = max(h, w)
        sq = np.zeros((side, side), dtype=sub.dtype)
        sq[:h, :w] = sub
        sub = sq
    out = cv2.resize(np.ascontiguousarray(sub, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0)


def rasterise_annotation(kind: str, image_hw: tuple[int, int], *, points=None, box=None, centre=None, radius=None) -> np.ndarray:
    """A bool mask for a contour, box or circle annotation (for whole-image outputs that keep masks)."""
    out = np.zeros(image_hw, dtype=np.uint8)
    if kind == "contour":
        pts = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(out, [pts], 1)
    elif kind == "box":
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1
    elif kind == "circle":
        yy, xx = np.ogrid[: image_hw[0], : image_hw[1]]
        cx, cy = centre
        out[((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) <= radius**2] = 1
    else:
        raise PatchError(f"cannot rasterise an annotation of kind {kind!r}")
    return out.astype(bool)
