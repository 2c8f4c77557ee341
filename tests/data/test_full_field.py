"""The ``full_field`` prepare task on synthetic films (no data needed): background and markers removed,
chest wall on the left, the breast box downscaled by the largest factor that fits, zero-padded, 16-bit."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastgan.data.io import read_image
from breastgan.data.prepare import PrepareError, load_config, prepare


def _film(path: Path, right: bool) -> None:
    """A 200x160 8-bit film: a half-ellipse breast on one edge and a bright marker in the opposite top corner."""
    h, w = 200, 160
    yy, xx = np.mgrid[0:h, 0:w]
    x = (w - 1 - xx) if right else xx
    breast = (x / 100.0) ** 2 + ((yy - 100) / 80.0) ** 2 <= 1  # box: 100 wide x ~160 tall
    img = np.where(breast, 120 + (yy % 7) * 10, 3).astype(np.uint8)
    marker = (yy < 12) & ((xx < 12) if right else (xx >= w - 12))
    img[marker] = 255
    Image.fromarray(img, mode="L").save(path)


@pytest.fixture()
def films(tmp_path) -> Path:
    rows = []
    for i, side in enumerate("LRLR"):
        _film(tmp_path / f"f{i}.png", right=side == "R")
        rows.append({"path": f"f{i}.png", "patient": f"p{i}", "label": "normal", "image_id": f"f{i}", "view": "MLO", "laterality": side})
    with open(tmp_path / "films.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return tmp_path / "films.csv"


def _config(films: Path, out: Path, **args) -> dict:
    return {"dataset": {"adapter": "csv", "args": {"csv": str(films)}}, "output": str(out), "workers": 1, "mode": "strict",
            "task": {"name": "full_field", "args": {"size": [80, 64], **args}},
            "splits": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}}


def test_full_field_images(films, tmp_path):
    prepare(load_config(raw=_config(films, tmp_path / "out")))
    rows = {r["image_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "manifest.csv"))}
    assert sorted(rows) == ["f0", "f1", "f2", "f3"]
    for item, r in rows.items():
        path = tmp_path / "out" / r["file"]
        assert Image.open(path).mode in ("I;16", "I")  # 16-bit PNG
        px = read_image(path).pixels
        assert px.shape == (80, 64)
        # breast box ~160x100 -> largest factor that fits 80x64: 0.5 (height matches), width 50 of 64, zero-padded right
        assert float(r["scale"]) == pytest.approx(0.5, abs=0.01)
        assert np.all(px[:, 52:] == 0) and px[:, :48].max() > 0.3
        assert px[40, 0] > 0.3 and px[40, 60] == 0  # chest wall on the left edge
        assert px.max() < 0.9  # the 255 marker outside the breast was removed
        assert r["flipped"] == ("1" if r["laterality"] == "R" else "0") and r["orientation"] == "chest_wall_left"
        assert r["view"] == "MLO" and r["label"] == "normal"


def test_wrong_aspect_and_upscaling_are_refused(films, tmp_path):
    with pytest.raises(ValueError, match=r"size: 80x80 is not 5:4 \(H:W\)"):
        prepare(load_config(raw=_config(films, tmp_path / "o1", size=[80, 80])))
    with pytest.raises(PrepareError, match=r"f0.png: the breast \(\d+x\d+ px\) is smaller than size 400x320; it would be upscaled"):
        prepare(load_config(raw=_config(films, tmp_path / "o2", size=[400, 320])))
    cfg = _config(films, tmp_path / "o3", size=[400, 320], upscale=True)
    prepare(load_config(raw=cfg))
    assert read_image(next((tmp_path / "o3" / "images").glob("*.png"))).pixels.shape == (400, 320)
