"""Mammogram preprocessing as pure functions on float32 [0, 1] arrays.

Breast segmentation (threshold + largest connected component, so burned-in labels and markers,
which are separate blobs, fall away), crop to the breast, optional CLAHE, aspect-preserving resize
with zero padding (the ProGAN recipe: scale by the factor that matches one target side, pad the
other), random crops that keep the breast inside (the dm-GAN recipe), and laterality
normalisation. Every geometric step returns what it did so annotations can follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np

ChestWall = Literal["left", "right"]


class Box(NamedTuple):
    """Pixel box, x = column, y = row, end exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_text(self) -> str:
        return f"{self.x0} {self.y0} {self.x1} {self.y1}"


def otsu_threshold(img: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(img, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # empty bins between two modes give a plateau of equal maxima: take its middle, not its start
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    k = (int(best[0]) + int(best[-1])) // 2
    return float(edges[k + 1])  # class 0 is bins 0..k: the threshold is the upper edge of bin k


def segment_breast(img: np.ndarray, threshold: float | None = None, threshold_scale: float = 0.5, opening_px: int = 5) -> np.ndarray:
    """Boolean breast mask: pixels above a threshold, opened, largest component, holes filled.

    The default threshold is half of Otsu's: Otsu splits dense from fatty tissue on many films,
    while the breast/background step is much lower. The opening detaches thin bridges between
    the breast and labels or film edges before the largest component is kept.
    """
    if img.ndim != 2:
        raise ValueError(f"segment_breast: expected a 2-D image, got shape {img.shape}")
    t = threshold if threshold is not None else otsu_threshold(img) * threshold_scale
    fg = (img > t).astype(np.uint8)
    if opening_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (opening_px, opening_px))
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(img.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return fill_holes(labels == largest)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background (dark ducts, dense cores below threshold) inside the breast."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def mask_bbox(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_bbox: empty mask")
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def crop(img: np.ndarray, box: Box) -> np.ndarray:
    return img[box.y0 : box.y1, box.x0 : box.x1]


def chest_wall_side(mask: np.ndarray) -> ChestWall:
    """The side where the breast is widest: it tapers from the chest wall towards the nipple."""
    cols = mask.sum(axis=0).astype(np.float64)
    half = mask.shape[1] // 2
    return "left" if cols[:half].sum() >= cols[mask.shape[1] - half :].sum() else "right"


def needs_flip(mask: np.ndarray, chest_wall: ChestWall = "left") -> bool:
    return chest_wall_side(mask) != chest_wall


def flip_box(box: Box, width: int) -> Box:
    """Horizontal flip of a box in an image ``width`` pixels wide."""
    return Box(width - box.x1, box.y0, width - box.x0, box.y1)


def flip_x(x: float, width: int) -> float:
    """Continuous x coordinate under a horizontal flip (pixel i covers [i, i + 1))."""
    return width - x


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on 16-bit samples (no 8-bit detour)."""
    q = np.round(np.clip(img, 0, 1) * 65535.0).astype(np.uint16)
    out = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(q)
    return out.astype(np.float32) / np.float32(65535.0)


@dataclass(frozen=True)
class Placement:
    """Where a resized image sits in the padded canvas: out = in * scale + offset."""

    scale: float
    offset_x: int
    offset_y: int
    size_hw: tuple[int, int]

    def map_xy(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale + self.offset_x, y * self.scale + self.offset_y


INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def fit_placement(src_hw: tuple[int, int], target_hw: tuple[int, int], pad: Literal["end", "centre"] = "end") -> Placement:
    h, w = src_hw
    th, tw = target_hw
    scale = min(th / h, tw / w)
    nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
    ox, oy = ((tw - nw) // 2, (th - nh) // 2) if pad == "centre" else (0, 0)
    return Placement(scale, ox, oy, (nh, nw))


def resize_pad(
    img: np.ndarray,
    target_hw: tuple[int, int],
    interpolation: str = "area",
    pad: Literal["end", "centre"] = "end",
) -> tuple[np.ndarray, Placement]:
    """Resize keeping the aspect ratio so one side matches, zero-pad the other side.

    ``pad='end'`` pads right/bottom, keeping a left chest wall on the image edge.
    """
    p = fit_placement(img.shape[:2], target_hw, pad)
    nh, nw = p.size_hw
    resized = cv2.resize(img, (nw, nh), interpolation=INTERPOLATION[interpolation])
    out = np.zeros(target_hw, dtype=img.dtype)
    out[p.offset_y : p.offset_y + nh, p.offset_x : p.offset_x + nw] = resized
    return out, p


def window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Number of True pixels in every size x size window (by top-left corner), via an integral image."""
    ii = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_32S) if mask.size < 2**31 else np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]


def random_breast_crops(
    mask: np.ndarray, size: int, n: int, rng: np.random.Generator, min_breast_fraction: float = 0.5
) -> list[Box]:
    """``n`` random size x size boxes whose breast fraction is at least ``min_breast_fraction``.

    Candidates are drawn uniformly among all valid positions (no bias towards the breast centre).
    """
    h, w = mask.shape
    if size > h or size > w:
        raise ValueError(f"crop size {size} larger than the image ({h}x{w})")
    ok = window_sums(mask, size) >= min_breast_fraction * size * size
    ys, xs = np.nonzero(ok)
    if ys.size == 0:
        raise ValueError(f"no {size}x{size} crop has at least {min_breast_fraction:.0%} breast pixels")
    picks = rng.choice(ys.size, size=n, replace=ys.size < n)
    return [Box(int(xs[i]), int(ys[i]), int(xs[i]) + size, int(ys[i]) + size) for i in picks]
