"""VinDr-Mammo adapter on a fixture in the published layout: CSV boxes + images/<study>/<image>.dicom."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from breastgan.data.adapters import ADAPTERS  # noqa: E402
from breastgan.data.prepare import PrepareError, load_config, prepare  # noqa: E402

HEADER = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads", "breast_density",
          "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"]


def write_dicom(path: Path, arr: np.ndarray, intent: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationIntentType = intent
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture()
def vindr(tmp_path):
    yy, xx = np.mgrid[:256, :200]
    img = np.where(xx ** 2 + (yy - 128) ** 2 < 120 ** 2, 1000, 4000)  # MONOCHROME1: the breast is dark in stored values
    write_dicom(tmp_path / "images" / "s1" / "a1.dicom", img, "FOR PRESENTATION")
    write_dicom(tmp_path / "images" / "s1" / "a2.dicom", img, "FOR PRESENTATION")
    write_dicom(tmp_path / "images" / "s2" / "b1.dicom", img, "FOR PROCESSING")
    rows = [
        ["s1", "x", "a1", "L", "CC", 256, 200, "BI-RADS 4", "DENSITY C", "['Mass']", "BI-RADS 4", 30, 100, 60, 140, "training"],
        ["s1", "x", "a1", "L", "CC", 256, 200, "BI-RADS 4", "DENSITY C", "['Suspicious Calcification', 'Mass']", "BI-RADS 4", 40, 60, 50, 70, "training"],
        ["s1", "x", "a2", "L", "MLO", 256, 200, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "", "", "", "training"],
        ["s2", "x", "b1", "R", "CC", 256, 200, "BI-RADS 1", "DENSITY B", "['No Finding']", "", "", "", "", "", "test"],
    ]
    with open(tmp_path / "finding_annotations.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(HEADER)
        wr.writerows(rows)
    return tmp_path


def test_listing_groups_boxes_per_image(vindr):
    recs = {r.image_id: r for r in ADAPTERS.build("vindr", {"root": str(vindr)}).records}
    a1 = recs["a1"]
    assert a1.label == "malignant" and a1.patient_id == "s1" and a1.density == "DENSITY C"
    assert [a.box for a in a1.annotations] == [(30, 100, 60, 140), (40, 60, 50, 70)]
    assert a1.annotations[1].finding == "Suspicious Calcification/Mass"
    assert recs["a2"].label == "normal" and not recs["a2"].annotations
    assert recs["b1"].source.endswith("images/s2/b1.dicom")


def test_mixed_presentation_intent_is_not_silent(vindr, tmp_path):
    raw = {
        "dataset": {"adapter": "vindr", "args": {"root": str(vindr)}}, "output": str(tmp_path / "out"), "workers": 1,
        "task": {"name": "patches", "args": {"margin_px": 10, "min_side": 64, "size": 32, "healthy_side": 64, "healthy_per_image": 1}},
        "splits": {"fractions": {"train": 1.0}},
    }
    with pytest.raises(PrepareError, match="mixed PresentationIntentType"):
        prepare(load_config(raw=raw))
    s = prepare(load_config(raw={**raw, "presentation_intent": "FOR PRESENTATION", "mode": "lenient"}))
    assert s.excluded == 1 and "FOR PROCESSING" in s.excluded_files[0]["reason"]
    assert s.counts_by_label == {"lesion": 2, "healthy": 1}
