"""What every dataset adapter yields: one :class:`ImageRecord` per input image.

Coordinates are always array coordinates of the image as stored (x = column, y = row from the
top, pixel ``i`` covering ``[i, i + 1)``); adapters convert their format's convention (e.g.
mini-MIAS's bottom-left origin) so nothing downstream needs to know it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnnotationKind = Literal["mask", "contour", "box", "circle", "unlocalised"]


@dataclass(frozen=True)
class Annotation:
    """One lesion. Exactly the fields of its ``kind`` are set."""

    kind: AnnotationKind
    finding: str = "lesion"  # e.g. CIRC, mass, calcification
    severity: str | None = None  # benign / malignant / None when unknown
    mask_files: tuple[str, ...] = ()  # kind == "mask": OR-ed together
    points: tuple[tuple[float, float], ...] = ()  # kind == "contour": (x, y) vertices
    box: tuple[float, float, float, float] | None = None  # kind == "box": x0, y0, x1, y1 (x1/y1 exclusive)
    centre: tuple[float, float] | None = None  # kind == "circle": (x, y)
    radius: float | None = None
    note: str = ""  # why an annotation is unlocalised, etc.


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    patient_id: str
    source: str  # path of the image file
    label: str  # image-level class: normal / benign / malignant / mixed / ...
    findings: tuple[str, ...] = ()  # finding classes present (e.g. ("CIRC",))
    view: str | None = None
    laterality: str | None = None  # "L" / "R"
    density: str | None = None
    pixel_spacing_mm: float | None = None  # known spacing when the format does not carry it
    annotations: tuple[Annotation, ...] = ()
    problems: tuple[str, ...] = ()  # found by the adapter itself (e.g. malformed annotation row)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lesion_image(self) -> bool:
        return self.label != "normal"


@dataclass(frozen=True)
class InputProblem:
    """A file the adapter found but could not turn into a record (orphan mask, unreadable row, ...)."""

    file: str
    problem: str


@dataclass
class DatasetListing:
    records: list[ImageRecord]
    problems: list[InputProblem] = field(default_factory=list)
    # adapters can ask for near-duplicate grouping (BUSI has many near-identical frames)
    near_duplicate_grouping: bool = False
