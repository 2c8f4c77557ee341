"""VinDr-Mammo: ``finding_annotations.csv`` (boxes) + ``breast-level_annotations.csv`` +
``images/<study_id>/<image_id>.dicom``.

Rows of one image are grouped; ``No Finding`` rows have empty boxes. The study is the patient unit
(one exam per woman). Classes come from BI-RADS via a configurable mapping, since VinDr-Mammo has
no biopsy results.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

DEFAULT_BIRADS = {"BI-RADS 1": "normal", "BI-RADS 2": "benign", "BI-RADS 3": "benign", "BI-RADS 4": "malignant", "BI-RADS 5": "malignant"}


class VindrArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path
    findings_csv: str = "finding_annotations.csv"
    breast_csv: str = "breast-level_annotations.csv"
    image_dir: str = "images"
    birads_to_label: dict[str, str] = DEFAULT_BIRADS


def _categories(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            return [str(c) for c in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            pass
    return [text] if text else []


def _box(row: dict) -> tuple[float, float, float, float] | None:
    try:
        return tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[return-value]
    except (KeyError, ValueError):
        return None


@ADAPTERS.register("vindr", args=VindrArgs, summary="VinDr-Mammo DICOMs with CSV finding boxes")
def vindr_listing(
    root: Path,
    findings_csv: str = "finding_annotations.csv",
    breast_csv: str = "breast-level_annotations.csv",
    image_dir: str = "images",
    birads_to_label: dict[str, str] = DEFAULT_BIRADS,
) -> DatasetListing:
    root = Path(root)
    table = root / findings_csv
    if not table.is_file():
        raise FileNotFoundError(f"{table}: VinDr-Mammo finding annotations not found")
    rows: dict[str, list[tuple[int, dict]]] = {}
    with open(table, newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            rows.setdefault(row["image_id"], []).append((lineno, row))
    breast_rows: dict[str, dict] = {}
    if (root / breast_csv).is_file():
        with open(root / breast_csv, newline="") as fh:
            breast_rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    records: list[ImageRecord] = []
    problems: list[InputProblem] = []
    for image_id in sorted(set(rows) | set(breast_rows)):
        first = rows[image_id][0][1] if image_id in rows else breast_rows[image_id]
        rec_problems: list[str] = []
        annotations = []
        for lineno, row in rows.get(image_id, []):
            cats = [c for c in _categories(row.get("finding_categories", "")) if c != "No Finding"]
            if not cats:
                continue
            box = _box(row)
            if box is None:
                rec_problems.append(f"{table}:{lineno}: finding {cats} without a numeric xmin/ymin/xmax/ymax box")
                continue
            sev = birads_to_label.get(row.get("finding_birads", ""), None)
            annotations.append(Annotation("box", "/".join(cats), sev, box=box))
        birads = first.get("breast_birads", "")
        label = birads_to_label.get(birads)
        if label is None:
            rec_problems.append(f"{table}: image {image_id}: breast_birads {birads!r} not in birads_to_label {sorted(birads_to_label)}")
            label = "unknown"
        records.append(
            ImageRecord(
                image_id=image_id,
                patient_id=first["study_id"],
                source=str(root / image_dir / first["study_id"] / f"{image_id}.dicom"),
                label=label,
                findings=tuple(sorted({a.finding for a in annotations})),
                view=first.get("view_position") or None,
                laterality=first.get("laterality") or None,
                density=first.get("breast_density") or None,
                annotations=tuple(annotations),
                problems=tuple(rec_problems),
                extra={"birads": birads, "published_split": first.get("split", "")},
            )
        )
    return DatasetListing(records, problems)
