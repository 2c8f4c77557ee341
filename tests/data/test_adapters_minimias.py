"""mini-MIAS adapter on the real data: counts per class and patient, coordinate flip, unlocalised rows."""

from __future__ import annotations

from collections import Counter

import pytest

from breastgan.data.adapters import ADAPTERS, default_data_root
from breastgan.data.adapters.minimias import parse_info_line

ROOT = default_data_root() / "mini-mias"
needs_data = pytest.mark.skipif(not (ROOT / "Info.txt").is_file(), reason=f"mini-MIAS not found at {ROOT} (set BREASTGAN_DATA)")


def test_parse_info_line_handles_missing_coordinates():
    assert parse_info_line("mdb001 G CIRC B 535 425 197")["y"] == 425
    row = parse_info_line("mdb216 D CALC M *NOTE 3*")
    assert row["x"] is None and "NOTE" in row["note"]
    assert parse_info_line("mdb059 F CIRC B")["x"] is None
    assert parse_info_line("mdb003 D NORM ")["severity"] is None


@pytest.fixture(scope="module")
def listing():
    if not (ROOT / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {ROOT} (set BREASTGAN_DATA)")
    return ADAPTERS.build("minimias", {"root": str(ROOT)})


@needs_data
def test_counts_per_class_and_patient(listing):
    recs = listing.records
    assert len(recs) == 322 and not listing.problems
    assert Counter(r.label for r in recs) == {"normal": 207, "benign": 63, "malignant": 51, "mixed": 1}
    patients = Counter(r.patient_id for r in recs)
    assert len(patients) == 161 and set(patients.values()) == {2}
    by_id = {r.image_id: r for r in recs}
    assert by_id["mdb144"].label == "mixed"
    assert by_id["mdb001"].patient_id == by_id["mdb002"].patient_id != by_id["mdb003"].patient_id
    assert (by_id["mdb001"].laterality, by_id["mdb002"].laterality) == ("R", "L")
    assert Counter(r.density for r in recs) == {"F": 106, "G": 104, "D": 112}


@needs_data
def test_annotation_rows_and_bottom_left_origin(listing):
    anns = [a for r in listing.records for a in r.annotations]
    assert len(anns) == 123
    assert Counter(a.severity for a in anns) == {"benign": 69, "malignant": 54}
    unloc = sorted(r.image_id for r in listing.records for a in r.annotations if a.kind == "unlocalised")
    assert unloc == ["mdb059", "mdb216", "mdb233", "mdb245"]
    (a,) = {r.image_id: r for r in listing.records}["mdb001"].annotations
    # Info.txt: mdb001 G CIRC B 535 425 197 -> column 535, row 1023 - 425 = 598 (pixel centres at +0.5)
    assert a.centre == (535.5, 598.5) and a.radius == 197
    assert len({r.image_id: r for r in listing.records}["mdb226"].annotations) == 3
