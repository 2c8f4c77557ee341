"""CBIS-DDSM: case-description CSVs (mass/calc, train/test) + full-image and ROI-mask DICOMs.

The CSVs list paths like ``Mass-Training_P_00001_LEFT_CC/<uid>/<uid>/000000.dcm`` that do not match
the folders TCIA downloads produce (``.../<date-uid>/<series>/1-1.dcm``). A listed path is used when
it exists; otherwise the DICOMs under the first path component are searched, and for ROI masks the
one whose size equals the full image is taken (the ROI folder also holds the small cropped image).
Several rows of one image (several abnormalities) become one record with several mask annotations.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
LATERALITY = {"LEFT": "L", "RIGHT": "R"}


class CbisDdsmArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path
    csv_files: tuple[str, ...] = ()  # default: every *case_description*.csv in root
    image_root: str = "."  # folder the CSV paths are relative to


def _dicom_size(path: Path) -> tuple[int, int] | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception:
        return None


def resolve_listed_path(base: Path, listed: str, want_size: tuple[int, int] | None = None) -> Path | None:
    listed = listed.strip().replace("\\", "/")
    direct = base / listed
    if direct.is_file():
        return direct
    folder = base / listed.split("/")[0]
    if not folder.is_dir():
        return None
    candidates = sorted(folder.rglob("*.dcm"))
    if want_size is not None:
        candidates = [c for c in candidates if _dicom_size(c) == want_size]
    return candidates[0] if len(candidates) >= 1 and (want_size is not None or len(candidates) == 1) else None


def _density(row: dict) -> str | None:
    v = row.get("breast density") or row.get("breast_density")
    return v.strip() if v else None


@ADAPTERS.register("cbis_ddsm", args=CbisDdsmArgs, summary="CBIS-DDSM case-description CSVs with ROI mask DICOMs")
def cbis_ddsm_listing(root: Path, csv_files: tuple[str, ...] = (), image_root: str = ".") -> DatasetListing:
    root = Path(root)
    files = [root / f for f in csv_files] if csv_files else sorted(root.glob("*case_description*.csv"))
    if not files:
        raise FileNotFoundError(f"{root}: no CBIS-DDSM *case_description*.csv files found")
    base = root / image_root
    grouped: dict[str, list[tuple[Path, int, dict]]] = {}
    for f in files:
        with open(f, newline="") as fh:
            for lineno, row in enumerate(csv.DictReader(fh), 2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                key = row.get("image file path", "").split("/")[0]
                grouped.setdefault(key, []).append((f, lineno, row))

    records: list[ImageRecord] = []
    problems: list[InputProblem] = []
    for image_id in sorted(grouped):
        f, lineno, first = grouped[image_id][0]
        if not image_id:
            problems.append(InputProblem(f"{f}:{lineno}", "row without 'image file path'"))
            continue
        image = resolve_listed_path(base, first["image file path"])
        rec_problems: list[str] = []
        if image is None:
            rec_problems.append(f"{f}:{lineno}: image {first['image file path']!r} not found under {base}")
        size = _dicom_size(image) if image else None
        annotations = []
        severities = set()
        for f, lineno, row in grouped[image_id]:
            pathology = PATHOLOGY.get(row.get("pathology", "").upper())
            if pathology is None:
                rec_problems.append(f"{f}:{lineno}: pathology {row.get('pathology')!r}, expected one of {sorted(PATHOLOGY)}")
                continue
            severities.add(pathology)
            mask = resolve_listed_path(base, row.get("ROI mask file path", ""), want_size=size) if size else None
            if mask is None:
                rec_problems.append(f"{f}:{lineno}: ROI mask {row.get('ROI mask file path')!r} not found (or no DICOM of the image's size {size})")
                continue
            annotations.append(Annotation("mask", row.get("abnormality type", "lesion"), pathology, mask_files=(str(mask),)))
        label = severities.pop() if len(severities) == 1 else ("mixed" if severities else "unknown")
        records.append(
            ImageRecord(
                image_id=image_id,
                patient_id=first.get("patient_id", image_id),
                source=str(image or base / first["image file path"]),
                label=label,
                findings=tuple(sorted({a.finding for a in annotations})),
                view=first.get("image view") or None,
                laterality=LATERALITY.get(first.get("left or right breast", "").upper()),
                density=_density(first),
                annotations=tuple(annotations),
                problems=tuple(rec_problems),
            )
        )
    return DatasetListing(records, problems)
