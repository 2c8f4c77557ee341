"""BUSI breast ultrasound: ``<class>/<class> (N).png`` with ``_mask.png``, ``_mask_1.png``, ... masks.

Several masks of one image are OR-ed (one annotation with all mask files); normal images come with
all-zero masks and are recorded without annotations. BUSI has no patient ids: each image is its
own "patient", and near-duplicate grouping (requested here, done in preflight) keeps near-identical
frames in one split.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.records import Annotation, DatasetListing, ImageRecord, InputProblem

CLASSES = ("benign", "malignant", "normal")
_IMAGE = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)\.png$")
_MASK = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)_mask(?:_(?P<k>\d+))?\.png$")


class BusiArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path
    classes: tuple[str, ...] = CLASSES
    near_duplicates: bool = True


@ADAPTERS.register("busi", args=BusiArgs, summary="BUSI ultrasound (benign/malignant/normal) with OR-ed lesion masks")
def busi_listing(root: Path, classes: tuple[str, ...] = CLASSES, near_duplicates: bool = True) -> DatasetListing:
    root = Path(root)
    records: list[ImageRecord] = []
    problems: list[InputProblem] = []
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: BUSI class folder {cls!r} not found (dataset root {root})")
        images: dict[int, Path] = {}
        masks: dict[int, list[tuple[int, Path]]] = {}
        for p in sorted(folder.iterdir()):
            if m := _MASK.match(p.name):
                masks.setdefault(int(m["n"]), []).append((int(m["k"] or 0), p))
            elif m := _IMAGE.match(p.name):
                images[int(m["n"])] = p
            elif p.is_file():
                problems.append(InputProblem(str(p), f"file name does not follow '{cls} (N).png' / '{cls} (N)_mask[_k].png'"))
        for n in sorted(set(masks) - set(images)):
            for _, p in masks[n]:
                problems.append(InputProblem(str(p), f"mask without its image '{cls} ({n}).png'"))
        for n in sorted(images):
            mask_files = tuple(str(p) for _, p in sorted(masks.get(n, [])))
            rec_problems: tuple[str, ...] = ()
            annotations: tuple[Annotation, ...] = ()
            if cls != "normal":
                if mask_files:
                    annotations = (Annotation("mask", "mass", cls, mask_files=mask_files),)
                else:
                    rec_problems = (f"{images[n]}: {cls} image has no mask file",)
            records.append(
                ImageRecord(
                    image_id=f"{cls}_{n:03d}",
                    patient_id=f"busi_{cls}_{n:03d}",
                    source=str(images[n]),
                    label=cls,
                    findings=("mass",) if cls != "normal" else (),
                    annotations=annotations,
                    problems=rec_problems,
                    extra={"mask_files": ";".join(mask_files)},
                )
            )
    return DatasetListing(records, problems, near_duplicate_grouping=near_duplicates)
