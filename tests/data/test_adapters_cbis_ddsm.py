"""CBIS-DDSM adapter on a fixture in the published layout (TCIA folders that do not match the CSV paths)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from breastgan.data.adapters import ADAPTERS  # noqa: E402
from breastgan.data.prepare import load_config, prepare  # noqa: E402


def write_dicom(path: Path, arr: np.ndarray, **tags) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8 * arr.dtype.itemsize
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture()
def cbis(tmp_path):
    h, w = 400, 300
    yy, xx = np.mgrid[:h, :w]
    full = np.where(xx ** 2 + (yy - 200) ** 2 < 180 ** 2, 30000, 500).astype(np.uint16)
    mask = np.zeros((h, w), np.uint8)
    mask[150:190, 60:100] = 255
    case = "Mass-Training_P_00001_LEFT_CC"
    write_dicom(tmp_path / case / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm", full, PatientID="P_00001")
    roi = tmp_path / f"{case}_1" / "07-21-2016-DDSM-01" / "1.000000-ROI mask images-01"
    write_dicom(roi / "1-1.dcm", np.zeros((40, 40), np.uint8))  # cropped image: wrong size, must not be taken
    write_dicom(roi / "1-2.dcm", mask)
    with open(tmp_path / "mass_case_description_train_set.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
                     "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path", "cropped image file path", "ROI mask file path"])
        wr.writerow(["P_00001", "3", "LEFT", "CC", "1", "mass", "IRREGULAR", "SPICULATED", "4", "MALIGNANT", "4",
                     f"{case}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm",
                     f"{case}_1/1.3.6.1.4.1.9590.100.1.2.3/1.3.6.1.4.1.9590.100.1.2.4/000000.dcm",
                     f"{case}_1/1.3.6.1.4.1.9590.100.1.2.3/1.3.6.1.4.1.9590.100.1.2.4/000001.dcm"])
        wr.writerow(["P_00002", "2", "RIGHT", "MLO", "1", "mass", "OVAL", "CIRCUMSCRIBED", "3", "BENIGN", "3",
                     "Mass-Training_P_00002_RIGHT_MLO/x/y/000000.dcm", "", "Mass-Training_P_00002_RIGHT_MLO_1/x/y/000001.dcm"])
    return tmp_path


def test_listing_resolves_tcia_layout_and_picks_full_size_mask(cbis):
    listing = ADAPTERS.build("cbis_ddsm", {"root": str(cbis)})
    recs = {r.image_id: r for r in listing.records}
    r = recs["Mass-Training_P_00001_LEFT_CC"]
    assert (r.patient_id, r.label, r.laterality, r.view, r.density) == ("P_00001", "malignant", "L", "CC", "3")
    assert r.source.endswith("1-1.dcm") and r.annotations[0].mask_files[0].endswith("1-2.dcm")
    missing = recs["Mass-Training_P_00002_RIGHT_MLO"]
    assert any("not found" in p for p in missing.problems)


def test_prepare_lesion_patch_around_roi_mask(cbis, tmp_path):
    cfg = load_config(raw={
        "dataset": {"adapter": "cbis_ddsm", "args": {"root": str(cbis)}}, "output": str(tmp_path / "out"), "mode": "lenient", "workers": 1,
        "task": {"name": "patches", "args": {"margin_px": 20, "min_side": 64, "size": 64, "chest_wall": "none"}},
        "splits": {"fractions": {"train": 1.0}},
    })
    s = prepare(cfg)
    assert s.counts_by_label == {"lesion": 1} and s.excluded == 1
    assert "Mass-Training_P_00002" in s.excluded_files[0]["file"] + s.excluded_files[0]["reason"]
    row = next(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert row["crop_box"] == "40 130 120 210"  # 40 px mask box + 20 px margin each side, centred on it
    assert "stored 16-bit unsigned" in row["decode_recipe"]
