"""Generic CSV manifest adapter: required columns, remapping, OR-ed masks, boxes and circles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from breastgan.data.adapters import ADAPTERS


def test_rows_become_records_with_annotations(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(
        "file,who,label,mask,box,cx,cy,radius,view,laterality,pixel_spacing_mm\n"
        "a.png,p1,malignant,m1.png;m2.png,,,,,CC,L,0.1\n"
        "b.png,p1,benign,,1 2 3 4,,,,MLO,R,\n"
        "c.png,p2,normal,,,,,,CC,R,\n"
        "d.png,p3,benign,,,5,6,2,CC,R,\n"
        "e.png,p4,benign,,1 2 x,,,,CC,R,\n"
    )
    listing = ADAPTERS.build("csv", {"csv": str(tmp_path / "m.csv"), "columns": {"path": "file", "patient": "who"}})
    r = {x.image_id: x for x in listing.records}
    assert r["a"].annotations[0].mask_files == (str(tmp_path / "m1.png"), str(tmp_path / "m2.png"))
    assert r["a"].pixel_spacing_mm == 0.1 and r["a"].source == str(tmp_path / "a.png")
    assert r["b"].annotations[0].box == (1, 2, 3, 4) and r["b"].annotations[0].severity == "benign"
    assert r["c"].label == "normal" and not r["c"].annotations
    assert r["d"].annotations[0].centre == (5, 6) and r["d"].annotations[0].radius == 2
    assert any("expected four numbers" in p for p in r["e"].problems)


def test_missing_required_column_is_named(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,normal\n")
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['patient'\]"):
        ADAPTERS.build("csv", {"csv": str(tmp_path / "m.csv")})
