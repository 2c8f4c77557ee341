"""A generic CSV manifest for in-house data: one row per image.

Required columns: ``path``, ``patient``, ``label``. Optional: ``image_id``, ``mask`` (one or more
paths separated by ';', OR-ed), ``box`` ("x0 y0 x1 y1" in pixels), ``cx``/``cy``/``radius``,
``view``, ``laterality``, ``density``, ``pixel_spacing_mm``. Relative paths are relative to the CSV.
Column names can be remapped with ``columns`` (e.g. ``{path: filename}``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

REQUIRED = ("path", "patient", "label")


class CsvManifestArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: Path
    columns: dict[str, str] = {}  # our name -> the CSV's column name
    normal_labels: tuple[str, ...] = ("normal", "healthy")


def _row_annotations(get, base: Path, label: str, where: str) -> tuple[list[Annotation], list[str]]:
    anns: list[Annotation] = []
    problems: list[str] = []
    sev = label if label in ("benign", "malignant") else None
    if get("mask"):
        files = tuple(str((base / m.strip()) if not Path(m.strip()).is_absolute() else Path(m.strip())) for m in get("mask").split(";") if m.strip())
        anns.append(Annotation("mask", "lesion", sev, mask_files=files))
    if get("box"):
        parts = get("box").replace(",", " ").split()
        try:
            x0, y0, x1, y1 = (float(v) for v in parts)
            anns.append(Annotation("box", "lesion", sev, box=(x0, y0, x1, y1)))
        except ValueError:
            problems.append(f"{where}: box {get('box')!r}; expected four numbers 'x0 y0 x1 y1'")
    if get("cx") or get("cy") or get("radius"):
        try:
            anns.append(Annotation("circle", "lesion", sev, centre=(float(get("cx")), float(get("cy"))), radius=float(get("radius"))))
        except ValueError:
            problems.append(f"{where}: cx/cy/radius {get('cx')!r}/{get('cy')!r}/{get('radius')!r}; expected three numbers")
    return anns, problems


@ADAPTERS.register("csv", args=CsvManifestArgs, summary="generic CSV: path, patient, label [, mask, box, cx/cy/radius, view, ...]")
def csv_listing(csv: Path, columns: dict[str, str] | None = None, normal_labels: tuple[str, ...] = ("normal", "healthy")) -> DatasetListing:
    import csv as csvmod

    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: manifest CSV not found")
    columns = columns or {}
    base = csv.parent
    records: list[ImageRecord] = []
    problems: list[InputProblem] = []
    with open(csv, newline="", encoding="utf-8-sig") as fh:
        reader = csvmod.DictReader(fh)
        header = set(reader.fieldnames or [])
        missing = [c for c in REQUIRED if columns.get(c, c) not in header]
        if missing:
            raise ValueError(f"{csv}: missing required column(s) {missing}; header is {sorted(header)}")
        for lineno, row in enumerate(reader, 2):
            def get(name: str, row=row) -> str:
                return (row.get(columns.get(name, name)) or "").strip()

            where = f"{csv}:{lineno}"
            if not get("path"):
                problems.append(InputProblem(where, "empty 'path'"))
                continue
            label = get("label")
            anns, rec_problems = _row_annotations(get, base, label, where)
            path = Path(get("path"))
            spacing = get("pixel_spacing_mm")
            records.append(
                ImageRecord(
                    image_id=get("image_id") or path.stem,
                    patient_id=get("patient"),
                    source=str(path if path.is_absolute() else base / path),
                    label="normal" if label in normal_labels else label,
                    findings=("lesion",) if anns else (),
                    view=get("view") or None,
                    laterality=get("laterality") or None,
                    density=get("density") or None,
                    pixel_spacing_mm=float(spacing) if spacing else None,
                    annotations=tuple(anns),
                    problems=tuple(rec_problems),
                )
            )
    return DatasetListing(records, problems)
