"""INbreast adapter on a fixture in the published layout: AllDICOMs, AllXML (plist ROIs), INbreast.csv."""

from __future__ import annotations

import csv
import plistlib
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from breastgan.data.adapters import ADAPTERS  # noqa: E402
from breastgan.data.adapters.inbreast import parse_roi_plist  # noqa: E402
from breastgan.data.prepare import load_config, prepare  # noqa: E402


def write_dicom(path: Path, arr: np.ndarray, **tags) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def roi_plist(rois: list[dict]) -> bytes:
    doc = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": [
        {"Area": 0.0, "Center": "(0, 0)", "Dev": 0.0, "IndexInImage": i, "Max": 0.0, "Mean": 0.0, "Min": 0.0,
         "Name": r["name"], "NumberOfPoints": len(r["pts"]), "Point_mm": [], "Point_px": [f"({x:.3f}, {y:.3f})" for x, y in r["pts"]],
         "Total": 0.0, "Type": 15}
        for i, r in enumerate(rois)]}]}
    return plistlib.dumps(doc)


@pytest.fixture()
def inbreast(tmp_path):
    yy, xx = np.mgrid[:300, :240]
    img = np.where((xx - 239) ** 2 + (yy - 150) ** 2 < 140 ** 2, 9000, 100)
    write_dicom(tmp_path / "AllDICOMs" / "22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm", img, ImageLaterality="R", ViewPosition="CC",
                PresentationIntentType="FOR PRESENTATION", PixelSpacing=[0.07, 0.07])
    write_dicom(tmp_path / "AllDICOMs" / "22678623_61b13c59bcba149e_MG_R_ML_ANON.dcm", img, ImageLaterality="R", ViewPosition="MLO",
                PresentationIntentType="FOR PRESENTATION", PixelSpacing=[0.07, 0.07])
    (tmp_path / "AllXML").mkdir()
    (tmp_path / "AllXML" / "22678622.xml").write_bytes(roi_plist([
        {"name": "Mass", "pts": [(150, 120), (170, 118), (180, 140), (160, 160), (148, 140)]},
        {"name": "Calcification", "pts": [(200.5, 100.25)]},
    ]))
    (tmp_path / "INbreast.csv").write_text(
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n"
        "removed;removed;R;CC;201001;22678622;2;4c\n"
        "removed;removed;R;MLO;201001;22678623;2;1\n"
    )
    return tmp_path


def test_plist_points_parsed_into_contour_and_circle():
    anns = parse_roi_plist(roi_plist([{"name": "Mass", "pts": [(1, 2), (5, 2), (5, 9)]}, {"name": "Calcification", "pts": [(3.5, 4.5)]}]), 7.0)
    assert anns[0].kind == "contour" and anns[0].points == ((1, 2), (5, 2), (5, 9))
    assert anns[1].kind == "circle" and anns[1].centre == (3.5, 4.5) and anns[1].radius == 7.0


def test_listing_labels_views_and_patients(inbreast):
    recs = {r.image_id: r for r in ADAPTERS.build("inbreast", {"root": str(inbreast)}).records}
    mass = recs["22678622"]
    assert (mass.label, mass.view, mass.laterality, mass.density, mass.patient_id) == ("malignant", "CC", "R", "2", "61b13c59bcba149e")
    assert [a.finding for a in mass.annotations] == ["Mass", "Calcification"]
    assert recs["22678623"].label == "normal" and recs["22678623"].view == "MLO" and not recs["22678623"].annotations


def test_prepare_patches_from_contours(inbreast, tmp_path):
    cfg = load_config(raw={
        "dataset": {"adapter": "inbreast", "args": {"root": str(inbreast)}}, "output": str(tmp_path / "out"), "workers": 1,
        "task": {"name": "patches", "args": {"margin_px": 10, "min_side": 64, "size": 32, "healthy_side": 64, "healthy_per_image": 1}},
        "splits": {"fractions": {"train": 1.0}},
    })
    s = prepare(cfg)
    assert s.counts_by_label == {"lesion": 2, "healthy": 1}
    rows = {r["item_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "manifest.csv"))}
    # chest wall on the right in the fixture: flipped to the left; crop boxes are reported in source coordinates
    assert rows["22678622_lesion0"]["flipped"] == "1"
    x0, y0, x1, y1 = map(int, rows["22678622_lesion0"]["crop_box"].split())
    assert x0 <= 148 and x1 >= 181 and y0 <= 118 and y1 >= 161
    assert rows["22678622_lesion0"]["presentation_intent"] == "FOR PRESENTATION"
