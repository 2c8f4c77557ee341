"""mini-MIAS: 322 film mammograms (1024x1024, 200 um) with Info.txt lesion centres and radii.

Quirks handled (conventions.md, data README): Info.txt is the full README, only lines starting
with ``mdb`` are table rows; several rows per image; abnormal rows without coordinates (kept as
unlocalised findings); y origin at the BOTTOM-left (row = 1023 - Y); consecutive films
(odd = right, even = left) are one patient.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

MIAS_SIZE = 1024
MIAS_SPACING_MM = 0.2
SEVERITIES = {"B": "benign", "M": "malignant"}


class MiniMiasArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path
    image_dir: str = "images"
    info_file: str = "Info.txt"


def parse_info_line(line: str) -> dict:
    """One table row: REFNUM BG CLASS [SEVERITY [X Y RADIUS]] (coordinates may be '*NOTE 3*')."""
    parts = line.split()
    row = {"refnum": parts[0], "bg": parts[1] if len(parts) > 1 else None, "cls": parts[2] if len(parts) > 2 else None}
    row["severity"] = parts[3] if len(parts) > 3 else None
    coords = parts[4:7]
    if len(coords) == 3 and all(c.lstrip("-").isdigit() for c in coords):
        row["x"], row["y"], row["radius"] = (int(c) for c in coords)
    else:
        row["x"] = row["y"] = row["radius"] = None
        row["note"] = " ".join(parts[4:])
    return row


def mias_patient(refnum: str) -> str:
    n = int(refnum[3:])
    return f"mias{(n + 1) // 2:03d}"


def image_label(severities: set[str]) -> str:
    names = {SEVERITIES[s] for s in severities if s in SEVERITIES}
    if not names:
        return "normal"
    return names.pop() if len(names) == 1 else "mixed"


@ADAPTERS.register("minimias", args=MiniMiasArgs, summary="mini-MIAS film mammograms with Info.txt circles")
def minimias_listing(root: Path, image_dir: str = "images", info_file: str = "Info.txt") -> DatasetListing:
    root = Path(root)
    info = root / info_file
    if not info.is_file():
        raise FileNotFoundError(f"{info}: mini-MIAS Info.txt not found (dataset root {root})")
    rows: dict[str, list[dict]] = {}
    problems: list[InputProblem] = []
    for lineno, line in enumerate(info.read_text(encoding="latin-1").splitlines(), 1):
        if not line.startswith("mdb"):
            continue
        row = parse_info_line(line)
        if row["cls"] is None:
            problems.append(InputProblem(f"{info}:{lineno}", f"table row without CLASS column: {line.strip()!r}"))
            continue
        rows.setdefault(row["refnum"], []).append(row)

    records = []
    for refnum in sorted(rows):
        annotations = []
        record_problems = []
        severities = set()
        for r in rows[refnum]:
            if r["cls"] == "NORM":
                continue
            sev = r["severity"]
            if sev not in SEVERITIES:
                record_problems.append(f"{info}: {refnum} {r['cls']}: severity {sev!r}, expected B or M")
                continue
            severities.add(sev)
            if r["x"] is None:
                annotations.append(Annotation("unlocalised", r["cls"], SEVERITIES[sev], note=f"Info.txt gives no coordinates ({r.get('note') or 'blank'})"))
            else:
                # bottom-left origin: array row = 1023 - Y; +0.5 puts the centre in the middle of the pixel
                cx, cy = r["x"] + 0.5, (MIAS_SIZE - 1 - r["y"]) + 0.5
                annotations.append(Annotation("circle", r["cls"], SEVERITIES[sev], centre=(cx, cy), radius=float(r["radius"])))
        n = int(refnum[3:])
        records.append(
            ImageRecord(
                image_id=refnum,
                patient_id=mias_patient(refnum),
                source=str(root / image_dir / f"{refnum}.png"),
                label=image_label(severities),
                findings=tuple(sorted({a.finding for a in annotations})),
                view="MLO",
                laterality="L" if n % 2 == 0 else "R",
                density=rows[refnum][0]["bg"],
                pixel_spacing_mm=MIAS_SPACING_MM,
                annotations=tuple(annotations),
                problems=tuple(record_problems),
            )
        )
    listed = {r.image_id for r in records}
    img_dir = root / image_dir
    if img_dir.is_dir():
        for p in sorted(img_dir.iterdir()):
            if p.suffix.lower() in (".png", ".pgm") and p.stem not in listed:
                problems.append(InputProblem(str(p), "image not listed in Info.txt"))
    return DatasetListing(records, problems)
