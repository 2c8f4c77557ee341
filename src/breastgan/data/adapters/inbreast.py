"""INbreast: ``AllDICOMs/<FileName>_<patient>_MG_<L|R>_<CC|ML>_ANON.dcm`` + ``AllXML/<FileName>.xml``.

The XML files are Apple property lists: ``Images[0].ROIs[*]`` with ``Name`` (Mass, Calcification,
Cluster, ...) and ``Point_px`` vertices written as ``"(x, y)"`` strings. One-point ROIs (single
calcifications) become circles of ``point_radius_px``; two points a box; more a contour. The
image-level class comes from the BI-RADS column of ``INbreast.csv`` (';'-separated) through a
configurable mapping (INbreast has no pathology).
"""

from __future__ import annotations

import csv
import plistlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

_NAME = re.compile(r"^(?P<file>\d+)_(?P<patient>[0-9a-f]+)_MG_(?P<lat>[LR])_(?P<view>[A-Z]+)_ANON$")
_POINT = re.compile(r"\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)")
VIEW_NAMES = {"ML": "MLO"}  # INbreast file names say ML for the MLO view
DEFAULT_BIRADS = {"1": "normal", "2": "benign", "3": "benign", "4a": "malignant", "4b": "malignant", "4c": "malignant", "4": "malignant", "5": "malignant", "6": "malignant"}


class InbreastArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path
    dicom_dir: str = "AllDICOMs"
    xml_dir: str = "AllXML"
    csv_file: str = "INbreast.csv"
    birads_to_label: dict[str, str] = DEFAULT_BIRADS
    point_radius_px: float = 10.0


def parse_roi_plist(data: bytes, point_radius_px: float = 10.0) -> list[Annotation]:
    doc = plistlib.loads(data)
    out: list[Annotation] = []
    for image in doc.get("Images", []):
        for roi in image.get("ROIs", []):
            pts = []
            for s in roi.get("Point_px", []):
                m = _POINT.search(str(s))
                if m:
                    pts.append((float(m.group(1)), float(m.group(2))))
            name = str(roi.get("Name", "lesion"))
            if len(pts) == 1:
                out.append(Annotation("circle", name, centre=pts[0], radius=point_radius_px))
            elif len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                out.append(Annotation("box", name, box=(min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)))
            elif pts:
                out.append(Annotation("contour", name, points=tuple(pts)))
    return out


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    delim = ";" if text.count(";") > text.count(",") else ","
    rows = {}
    for row in csv.DictReader(text.splitlines(), delimiter=delim):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if row.get("File Name"):
            rows[row["File Name"]] = row
    return rows


@ADAPTERS.register("inbreast", args=InbreastArgs, summary="INbreast DICOMs with XML plist ROI contours")
def inbreast_listing(
    root: Path,
    dicom_dir: str = "AllDICOMs",
    xml_dir: str = "AllXML",
    csv_file: str = "INbreast.csv",
    birads_to_label: dict[str, str] = DEFAULT_BIRADS,
    point_radius_px: float = 10.0,
) -> DatasetListing:
    root = Path(root)
    folder = root / dicom_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: INbreast DICOM folder not found")
    table = _read_csv(root / csv_file)
    records: list[ImageRecord] = []
    problems: list[InputProblem] = []
    for p in sorted(folder.glob("*.dcm")):
        m = _NAME.match(p.stem)
        if not m:
            problems.append(InputProblem(str(p), "file name does not follow <FileName>_<patient>_MG_<L|R>_<view>_ANON.dcm"))
            continue
        rec_problems: list[str] = []
        xml = root / xml_dir / f"{m['file']}.xml"
        annotations: list[Annotation] = []
        if xml.is_file():
            try:
                annotations = parse_roi_plist(xml.read_bytes(), point_radius_px)
            except Exception as exc:
                rec_problems.append(f"{xml}: cannot parse ROI plist ({type(exc).__name__}: {exc})")
        row = table.get(m["file"], {})
        birads = row.get("Bi-Rads", "").strip().lower()
        label = birads_to_label.get(birads) if birads else None
        if label is None:
            rec_problems.append(f"{root / csv_file}: File Name {m['file']}: Bi-Rads {birads!r} not in birads_to_label {sorted(birads_to_label)}")
            label = "unknown"
        annotations = [Annotation(a.kind, a.finding, None if label == "normal" else label, a.mask_files, a.points, a.box, a.centre, a.radius) for a in annotations]
        records.append(
            ImageRecord(
                image_id=m["file"],
                patient_id=m["patient"],
                source=str(p),
                label=label,
                findings=tuple(sorted({a.finding for a in annotations})),
                view=VIEW_NAMES.get(v := (row.get("View") or m["view"]).upper(), v),
                laterality=row.get("Laterality") or m["lat"],
                density=row.get("ACR") or None,
                annotations=tuple(annotations),
                problems=tuple(rec_problems),
                extra={"birads": birads},
            )
        )
    return DatasetListing(records, problems)
