"""``prepare(config)``: a raw dataset in, a prepared dataset folder out.

Pipeline: the adapter lists records -> preflight reads every file in parallel and reports each as
ok / warning / error (strict mode stops at the first error, naming the file; lenient mode excludes
it and says why) -> near-duplicate grouping -> the task (lesion/healthy patches, or whole images)
runs in parallel -> patient-level splits, reduced training subset, shards -> manifest, preflight
report, resolved config and summary are written, all inside a temporary folder renamed into place
at the end, so a half-prepared dataset never looks complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from breastgan.config import apply_overrides, expand_env
from breastgan.data.adapters import ADAPTERS
from breastgan.data.adapters.identifiers import IdentifierPolicy
from breastgan.data.adapters.readers import load_image, read_mask
from breastgan.data.adapters.records import Annotation, ImageRecord
from breastgan.data.io import ImageReadError, write_image
from breastgan.data.patches import (
    FloatBox,
    PatchError,
    box_from_circle,
    box_from_contour,
    box_from_mask,
    check_inside,
    jitter_box,
    lesion_patch_box,
    lesion_patch_side,
    rasterise_annotation,
    render_patch,
    sample_healthy_boxes,
    scaled_margin,
)
from breastgan.data.preprocess import Box, clahe, flip_box, flip_x, mask_bbox, needs_flip, random_breast_crops, resize_pad, segment_breast
from breastgan.data.splits import SplitItem, hamming_pairs, assign_shards, assign_splits, near_duplicate_links, reduced_training_subset
from breastgan.registry import Registry
from breastgan.utils.atomic import atomic_dir, write_json_atomic, write_text_atomic


class PrepareError(RuntimeError):
    """Strict mode hit a problem; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------
# configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaheConfig(_Strict):
    clip_limit: float = 2.0
    tile_grid: int = 8


class SegmentationConfig(_Strict):
    threshold: float | None = None  # absolute threshold in [0, 1]; None: half of Otsu's
    threshold_scale: float = 0.5
    opening_px: int = 5


class PatchTaskArgs(_Strict):
    """Lesion and healthy patches (model-sharing study rules)."""

    size: int = 128
    margin_px: float = 60.0
    min_side: int = 128
    reference_spacing_mm: float | None = None  # margin_px holds at this spacing; None: pixels as stored
    healthy_per_image: int = 2
    healthy_side: int | Literal["match_lesions"] = "match_lesions"
    max_background: float = 0.4
    lesion_copies: int = 1  # patches per lesion; copies after the first are jittered
    zoom_std: float = 0.0  # log-zoom standard deviation; 0 disables zoom jitter
    shift_std: float = 0.0  # shift standard deviation as a fraction of the patch side
    chest_wall: Literal["left", "right", "none"] = "left"
    clahe: ClaheConfig | None = None
    segmentation: SegmentationConfig = SegmentationConfig()


class RandomCropConfig(_Strict):
    size: int = 256
    n: int = 1
    min_breast_fraction: float = 0.5


class ImageTaskArgs(_Strict):
    """Whole images: mammograms (segment, crop, flip, CLAHE, resize/pad, crops) or ultrasound."""

    segment: bool = True
    crop_to_breast: bool = True
    chest_wall: Literal["left", "right", "none"] = "left"
    clahe: ClaheConfig | None = None
    size: tuple[int, int] | None = None  # (H, W) after aspect-preserving resize + zero padding
    pad: Literal["end", "centre"] = "end"
    random_crops: RandomCropConfig | None = None
    write_masks: bool = True
    segmentation: SegmentationConfig = SegmentationConfig()


class DatasetSpec(_Strict):
    adapter: str
    args: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(_Strict):
    name: Literal["patches", "images", "full_field"] = "patches"
    args: dict[str, Any] = Field(default_factory=dict)


class NearDuplicateConfig(_Strict):
    enabled: bool | None = None  # None: as the adapter asks (BUSI yes, others no)
    max_hamming: int = Field(4, ge=0, le=64)
    min_correlation: float = Field(0.97, ge=-1, le=1)
    # second check: perceptual hashes within loose_hamming bits (0: off), confirmed by thumbnail
    # correlation >= loose_correlation or difference hashes within max_dhash bits (BUSI pairs at phash
    # distance 6 and 8 straddled splits with the first two rules alone; docs/data-preparation.md)
    loose_hamming: int = Field(12, ge=0, le=64)
    loose_correlation: float = Field(0.85, ge=-1, le=1)
    max_dhash: int = Field(12, ge=0, le=64)
    report_hamming: int = Field(12, ge=0, le=64, description="the summary counts pairs this close in perceptual hash and how many straddle splits")


class ShardConfig(_Strict):
    column: str = "breast_area"
    n: int = 2


class SplitConfig(_Strict):
    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.70, "val": 0.15, "test": 0.15})
    train_fraction: float = 1.0
    shards: ShardConfig | None = None


class PrepareConfig(_Strict):
    dataset: DatasetSpec
    output: Path
    task: TaskSpec = TaskSpec()
    mode: Literal["strict", "lenient"] = "strict"
    workers: int = 2
    image_format: Literal["png16", "npy"] = "png16"
    reader: dict[str, dict[str, Any]] = Field(default_factory=dict)
    presentation_intent: Literal["FOR PRESENTATION", "FOR PROCESSING"] | None = None
    near_duplicates: NearDuplicateConfig = NearDuplicateConfig()
    identifiers: IdentifierPolicy = IdentifierPolicy()  # patient_id in the manifest: keyed hash unless mode: clear
    splits: SplitConfig = SplitConfig()
    seed: int = 0
    limit: int | None = None  # only the first N records (sorted by id): quick runs and tests
    include: list[str] | None = None  # only these image ids

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        if v < 1:
            raise ValueError("workers must be >= 1")
        return v


TASKS: Registry[Any] = Registry("prepare task")


def task_args(cfg: PrepareConfig) -> BaseModel:
    return TASKS.entry(cfg.task.name).validate_args(cfg.task.args, where="task.args")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), raw: dict[str, Any] | None = None) -> PrepareConfig:
    """Read a YAML config (environment variables expanded), apply overrides, validate."""
    if raw is None:
        if path is None:
            raise ValueError("load_config: give a config path or a raw dict")
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    raw = expand_env(apply_overrides(raw, list(overrides)))
    try:
        cfg = PrepareConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ValueError(f"{path or 'config'}: invalid prepare config:\n" + "\n".join(lines)) from None
    ADAPTERS.entry(cfg.dataset.adapter).validate_args(cfg.dataset.args, where="dataset.args")
    task_args(cfg)
    return cfg


def _absolute_args(model: BaseModel) -> dict[str, Any]:
    """Adapter args with every Path made absolute, so the saved config re-runs from anywhere."""
    out = model.model_dump()
    for k, v in out.items():
        if isinstance(v, Path):
            out[k] = v.expanduser().resolve()
    return out


def resolved_config(cfg: PrepareConfig) -> dict[str, Any]:
    adapter_args = _absolute_args(ADAPTERS.entry(cfg.dataset.adapter).validate_args(cfg.dataset.args))
    d = cfg.model_dump(mode="json")
    d["dataset"]["args"] = json.loads(json.dumps(adapter_args, default=str))
    d["task"]["args"] = task_args(cfg).model_dump(mode="json")
    d["output"] = str(cfg.output.expanduser().resolve())
    return d


# ----------------------------------------------------------------------------------------------
# preflight


@dataclass
class PreflightResult:
    image_id: str
    file: str
    status: Literal["ok", "warning", "error"] = "ok"
    problems: list[str] = field(default_factory=list)  # errors: the file is excluded
    notes: list[str] = field(default_factory=list)  # warnings: handled quirks, recorded
    height: int = 0
    width: int = 0
    recipe: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    lesion_sides: list[int] = field(default_factory=list)
    phash: int | None = None
    dhash: int | None = None
    thumbnail: np.ndarray | None = None

    def finish(self) -> "PreflightResult":
        self.status = "error" if self.problems else ("warning" if self.notes else "ok")
        return self

    def row(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "image_id": self.image_id,
            "status": self.status,
            "problems": " | ".join(self.problems),
            "notes": " | ".join(self.notes),
            "height": self.height,
            "width": self.width,
            "decode_recipe": self.recipe,
            "presentation_intent": self.meta.get("presentation_intent") or "",
        }


def record_spacing(record: ImageRecord, meta: dict[str, Any]) -> float | None:
    return record.pixel_spacing_mm if record.pixel_spacing_mm is not None else meta.get("pixel_spacing_mm")


def union_mask(ann: Annotation, image_hw: tuple[int, int], notes: list[str] | None = None) -> np.ndarray:
    """OR of an annotation's mask files; a size mismatch is an error naming the mask file."""
    out = np.zeros(image_hw, dtype=bool)
    for f in ann.mask_files:
        m = read_mask(f)
        if m.mask.shape != image_hw:
            raise ImageReadError(f"{f}: mask size {m.mask.shape[0]}x{m.mask.shape[1]} does not match its image ({image_hw[0]}x{image_hw[1]})")
        out |= m.mask
        if notes is not None:
            notes.extend(m.notes)
    return out


def lesion_box(ann: Annotation, image_hw: tuple[int, int], mask: np.ndarray | None = None) -> FloatBox:
    boxes: dict[str, Callable[[], FloatBox]] = {
        "mask": lambda: box_from_mask(mask if mask is not None else union_mask(ann, image_hw)),
        "contour": lambda: box_from_contour(ann.points),
        "box": lambda: FloatBox(*ann.box),  # type: ignore[misc]
        "circle": lambda: box_from_circle(ann.centre[0], ann.centre[1], ann.radius),  # type: ignore[index]
    }
    box = boxes[ann.kind]()
    check_inside(box, image_hw)
    return box


def _image_hash(pixels: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Perceptual hash, difference hash (the second, independent hash) and a 32x32 thumbnail."""
    import cv2
    import imagehash
    from PIL import Image

    im = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    thumb = cv2.resize(pixels, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return int(str(imagehash.phash(im)), 16), int(str(imagehash.dhash(im)), 16), thumb


def preflight_record(record: ImageRecord, cfg: PrepareConfig, want_hash: bool) -> PreflightResult:
    res = PreflightResult(record.image_id, record.source)
    res.problems.extend(record.problems)
    try:
        img = load_image(record.source, cfg.reader)
    except (ImageReadError, OSError) as exc:
        res.problems.append(str(exc))
        return res.finish()
    res.height, res.width = img.pixels.shape
    res.recipe, res.meta = img.recipe, dict(img.meta)
    hw = img.pixels.shape
    intent = res.meta.get("presentation_intent")
    if cfg.presentation_intent and intent and intent != cfg.presentation_intent:
        res.problems.append(f"{record.source}: PresentationIntentType {intent!r}, config asks for {cfg.presentation_intent!r}")
    args = task_args(cfg)
    margin = scaled_margin(getattr(args, "margin_px", 60.0), record_spacing(record, res.meta), getattr(args, "reference_spacing_mm", None))
    localised = 0
    for i, ann in enumerate(record.annotations):
        if ann.kind == "unlocalised":
            res.notes.append(f"{record.image_id}: annotation {i} ({ann.finding}) has no location: {ann.note}")
            continue
        try:
            mask = union_mask(ann, hw, res.notes) if ann.kind == "mask" else None
            box = lesion_box(ann, hw, mask)
        except PatchError as exc:
            res.problems.append(f"{record.source}: annotation {i} ({ann.finding}): {exc}")
            continue
        except (ImageReadError, OSError) as exc:
            res.problems.append(str(exc))
            continue
        localised += 1
        res.lesion_sides.append(lesion_patch_side(box, margin, getattr(args, "min_side", 128)))
    if record.is_lesion_image and not record.annotations:
        res.notes.append(f"{record.image_id}: {record.label} image without lesion annotation")
    if want_hash and not res.problems:
        res.phash, res.dhash, res.thumbnail = _image_hash(img.pixels)
    return res.finish()


# ----------------------------------------------------------------------------------------------
# tasks: one record in, manifest rows out (images written by the worker)


@dataclass
class TaskResult:
    image_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # recorded reasons for producing nothing from part of a record


def record_rng(seed: int, image_id: str, purpose: str) -> np.random.Generator:
    """Per-record generator: results do not depend on the number of workers or their order."""
    d = hashlib.sha256(f"{seed}\x00{image_id}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(d[:8], "little"))


def _write(out_dir: Path, item_id: str, pixels: np.ndarray, fmt: str) -> str:
    rel = f"images/{item_id}.{'npy' if fmt == 'npy' else 'png'}"
    write_image(out_dir / rel, pixels, bit_depth=16)
    return rel


def _base_row(record: ImageRecord, pre: PreflightResult) -> dict[str, Any]:
    return {
        "image_id": record.image_id,
        "patient_id": record.patient_id,  # still the dataset's id here; pseudonymised before the manifest is written
        "image_label": record.label,
        "findings": ";".join(record.findings),
        "view": record.view or pre.meta.get("view") or "",
        "laterality": record.laterality or pre.meta.get("laterality") or "",
        "density": record.density or "",
        "source_file": record.source,
        "pixel_spacing_mm": record_spacing(record, pre.meta) or "",
        "decode_recipe": pre.recipe,
        "presentation_intent": pre.meta.get("presentation_intent") or "",
        "manufacturer": pre.meta.get("manufacturer") or "",
    }


def _source_box(box: Box, flipped: bool, width: int) -> str:
    return (flip_box(box, width) if flipped else box).as_text()


HEALTHY_SIDE_DRAWS = 20


def _healthy_box(breast: np.ndarray, args: PatchTaskArgs, lesion_sides: list[int], rng: np.random.Generator) -> Box:
    """A healthy square whose side follows the lesion patch sides (no size shortcut between classes).

    A side drawn from the lesion patch sides can be too large for a small breast; up to
    ``HEALTHY_SIDE_DRAWS`` sides are tried before the image is reported as unusable.
    """
    h, w = breast.shape
    last: PatchError | None = None
    for _ in range(HEALTHY_SIDE_DRAWS):
        if args.healthy_side == "match_lesions" and lesion_sides:
            side = int(rng.choice(lesion_sides))
        else:
            side = args.healthy_side if isinstance(args.healthy_side, int) else args.min_side
        if args.zoom_std > 0:
            side = max(8, int(round(side * math.exp(rng.normal(0.0, args.zoom_std)))))
        try:
            return sample_healthy_boxes(breast, min(side, h, w), 1, rng, args.max_background)[0]
        except PatchError as exc:
            last = exc
    raise PatchError(f"{last} (tried {HEALTHY_SIDE_DRAWS} sides)")


@TASKS.register("patches", args=PatchTaskArgs, summary="128x128 lesion patches and healthy patches (model-sharing study)")
def patches_task(record: ImageRecord, pre: PreflightResult, cfg: PrepareConfig, args: PatchTaskArgs, out_dir: Path, healthy_sides: list[int]) -> TaskResult:
    res = TaskResult(record.image_id)
    img = load_image(record.source, cfg.reader).pixels
    h, w = img.shape
    seg = args.segmentation
    breast = segment_breast(img, seg.threshold, seg.threshold_scale, seg.opening_px)
    flipped = args.chest_wall != "none" and bool(breast.any()) and needs_flip(breast, args.chest_wall)
    if flipped:
        img, breast = img[:, ::-1], breast[:, ::-1]
    if args.clahe:
        img = clahe(img, args.clahe.clip_limit, args.clahe.tile_grid)
    base = _base_row(record, pre)
    spacing = record_spacing(record, pre.meta)
    area = int(breast.sum())
    base.update(flipped=int(flipped), breast_area=area * spacing**2 if spacing else area, breast_area_unit="mm2" if spacing else "px")
    margin = scaled_margin(args.margin_px, spacing, args.reference_spacing_mm)

    def emit(item_id: str, box: Box, label: str, **extra: Any) -> None:
        rel = _write(out_dir, item_id, render_patch(img, box, args.size), cfg.image_format)
        bg = 1.0 - float(breast[box.y0 : box.y1, box.x0 : box.x1].mean())
        res.rows.append({**base, "item_id": item_id, "file": rel, "label": label, "crop_box": _source_box(box, flipped, w), "background_fraction": round(bg, 4), **extra})

    if record.label == "normal":
        rng = record_rng(cfg.seed, record.image_id, "healthy")
        for k in range(args.healthy_per_image):
            try:
                box = _healthy_box(breast, args, healthy_sides, rng)
            except PatchError as exc:
                res.problems.append(f"{record.source}: healthy patch {k}: {exc}")
                break
            emit(f"{record.image_id}_healthy{k}", box, "healthy", severity="", finding="", lesion_index="")
        return res

    for i, ann in enumerate(record.annotations):
        if ann.kind == "unlocalised":
            res.skipped.append(f"{record.image_id}: lesion {i} ({ann.finding}) has no location; no lesion patch")
            continue
        lb = lesion_box(ann, (h, w))
        if flipped:
            lb = FloatBox(flip_x(lb.x1, w), lb.y0, flip_x(lb.x0, w), lb.y1)
        box = lesion_patch_box(lb, (h, w), margin, args.min_side)
        rng = record_rng(cfg.seed, record.image_id, f"lesion{i}")
        for c in range(args.lesion_copies):
            b = box if c == 0 else jitter_box(box, (h, w), rng, args.zoom_std, args.shift_std, keep=lb)
            suffix = f"_lesion{i}" + (f"_j{c}" if args.lesion_copies > 1 else "")
            emit(record.image_id + suffix, b, "lesion", severity=ann.severity or "", finding=ann.finding, lesion_index=i)
    if not record.annotations:
        res.skipped.append(f"{record.image_id}: {record.label} image without annotations; no lesion patch, not used as healthy")
    return res


def _lesion_mask(record: ImageRecord, hw: tuple[int, int]) -> np.ndarray | None:
    masks = []
    for ann in record.annotations:
        if ann.kind == "mask":
            masks.append(union_mask(ann, hw))
        elif ann.kind != "unlocalised":
            masks.append(rasterise_annotation(ann.kind, hw, points=ann.points, box=ann.box, centre=ann.centre, radius=ann.radius))
    return np.logical_or.reduce(masks) if masks else None


@TASKS.register("images", args=ImageTaskArgs, summary="whole images: segment, crop, flip, CLAHE, resize/pad, random crops")
def images_task(record: ImageRecord, pre: PreflightResult, cfg: PrepareConfig, args: ImageTaskArgs, out_dir: Path, healthy_sides: list[int]) -> TaskResult:
    res = TaskResult(record.image_id)
    img = load_image(record.source, cfg.reader).pixels
    h, w = img.shape
    lesion = _lesion_mask(record, (h, w))
    seg = args.segmentation
    breast = segment_breast(img, seg.threshold, seg.threshold_scale, seg.opening_px) if args.segment else np.ones((h, w), bool)
    if args.segment:
        img = np.where(breast, img, 0.0).astype(np.float32)  # labels and markers outside the breast removed
    crop_box = mask_bbox(breast) if (args.segment and args.crop_to_breast and breast.any()) else Box(0, 0, w, h)
    sl = (slice(crop_box.y0, crop_box.y1), slice(crop_box.x0, crop_box.x1))
    img, breast = img[sl], breast[sl]
    lesion = lesion[sl] if lesion is not None else None
    flipped = args.segment and args.chest_wall != "none" and needs_flip(breast, args.chest_wall)
    if flipped:
        img, breast = img[:, ::-1], breast[:, ::-1]
        lesion = lesion[:, ::-1] if lesion is not None else None
    if args.clahe:
        img = clahe(img, args.clahe.clip_limit, args.clahe.tile_grid)
    scale, ox, oy = 1.0, 0, 0
    if args.size is not None:
        img, place = resize_pad(np.ascontiguousarray(img), tuple(args.size), "area", args.pad)
        breast = resize_pad(breast.astype(np.float32), tuple(args.size), "nearest", args.pad)[0] > 0.5
        if lesion is not None:
            lesion = resize_pad(lesion.astype(np.float32), tuple(args.size), "nearest", args.pad)[0] > 0.5
        scale, ox, oy = place.scale, place.offset_x, place.offset_y
    spacing = record_spacing(record, pre.meta)
    area = int(breast.sum()) / (scale * scale)
    base = _base_row(record, pre)
    base.update(label=record.label, flipped=int(flipped), breast_area=area * spacing**2 if spacing else area, breast_area_unit="mm2" if spacing else "px")

    def to_source(b: Box) -> str:
        # canvas -> cropped (and maybe flipped) image -> source coordinates
        x0, x1 = (b.x0 - ox) / scale, (b.x1 - ox) / scale
        y0, y1 = (b.y0 - oy) / scale, (b.y1 - oy) / scale
        cw = crop_box.width
        if flipped:
            x0, x1 = cw - x1, cw - x0
        x0, x1 = max(0.0, x0) + crop_box.x0, min(float(cw), x1) + crop_box.x0
        y0, y1 = max(0.0, y0) + crop_box.y0, min(float(crop_box.height), y1) + crop_box.y0
        return f"{int(math.floor(x0))} {int(math.floor(y0))} {int(math.ceil(x1))} {int(math.ceil(y1))}"

    windows = [(record.image_id, Box(0, 0, img.shape[1], img.shape[0]))]
    if args.random_crops is not None:
        rc = args.random_crops
        try:
            boxes = random_breast_crops(breast, rc.size, rc.n, record_rng(cfg.seed, record.image_id, "crops"), rc.min_breast_fraction)
        except ValueError as exc:
            res.problems.append(f"{record.source}: {exc}")
            return res
        windows = [(f"{record.image_id}_crop{k}", b) for k, b in enumerate(boxes)]
    for item_id, b in windows:
        pix = img[b.y0 : b.y1, b.x0 : b.x1]
        row = {**base, "item_id": item_id, "file": _write(out_dir, item_id, pix, cfg.image_format), "crop_box": to_source(b) if args.random_crops else crop_box.as_text()}
        if args.write_masks and lesion is not None:
            row["mask_file"] = f"masks/{item_id}.png"
            write_image(out_dir / row["mask_file"], lesion[b.y0 : b.y1, b.x0 : b.x1].astype(np.float32), bit_depth=8)
        res.rows.append(row)
    return res


# ----------------------------------------------------------------------------------------------
# orchestration


@dataclass
class PreparedSummary:
    output: str
    dataset: str
    task: str
    mode: str
    check_only: bool
    inputs: int
    ok: int
    warnings: int
    excluded: int
    excluded_files: list[dict[str, str]]
    skipped: list[str]
    items: int
    counts_by_label: dict[str, int]
    counts_by_split: dict[str, dict[str, int]]
    images_by_label: dict[str, int]
    patients_by_split: dict[str, int]
    near_duplicate_groups: int
    near_duplicates: dict[str, Any]  # rules and thresholds used, images in groups, pairs linked per rule, pairs across splits
    identifiers: dict[str, str]  # the identifier policy (mode, key fingerprint; never the key)
    dataset_warnings: list[str]
    workers: int
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; nested threads would oversubscribe


class _Mapper:
    """Ordered map over records, in-process (1 worker) or on one process pool reused by every phase.

    The pool uses a forkserver that has preloaded this module: workers start by forking a clean
    process that never ran OpenCV/OpenMP thread pools (forking one that did deadlocks the children,
    seen here on a second prepare() in one process), without re-importing torch for every pool.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "_Mapper":
        if self.workers > 1:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["breastgan.data.prepare"])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_init_worker, mp_context=ctx)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable, items: list, stop_on: Callable[[Any], str | None] | None = None) -> list:
        """``stop_on(result)`` returning a message aborts with it (strict mode)."""
        if self._pool is None or len(items) <= 1:
            results: Iterable = map(fn, items)
        else:
            results = self._pool.map(fn, items, chunksize=max(1, min(8, len(items) // (self.workers * 4))))
        out = []
        for r in results:
            if stop_on and (msg := stop_on(r)):
                raise PrepareError(msg)
            out.append(r)
        return out


class _Preflight:
    def __init__(self, cfg: PrepareConfig, want_hash: bool):
        self.cfg, self.want_hash = cfg, want_hash

    def __call__(self, record: ImageRecord) -> PreflightResult:
        return preflight_record(record, self.cfg, self.want_hash)


class _Extract:
    def __init__(self, cfg: PrepareConfig, out_dir: Path, healthy_sides: list[int]):
        self.cfg, self.out_dir, self.healthy_sides = cfg, out_dir, healthy_sides
        self.args = task_args(cfg)

    def __call__(self, pair: tuple[ImageRecord, PreflightResult]) -> TaskResult:
        record, pre = pair
        try:
            return TASKS.get(self.cfg.task.name)(record, pre, self.cfg, self.args, self.out_dir, self.healthy_sides)
        except (ImageReadError, PatchError, OSError, ValueError) as exc:
            return TaskResult(record.image_id, problems=[f"{record.source}: {exc}"])


def _select(records: list[ImageRecord], cfg: PrepareConfig) -> list[ImageRecord]:
    if cfg.include is not None:
        wanted = set(cfg.include)
        missing = wanted - {r.image_id for r in records}
        if missing:
            raise PrepareError(f"include: image ids not in the dataset: {sorted(missing)[:10]}")
        records = [r for r in records if r.image_id in wanted]
    return records[: cfg.limit] if cfg.limit is not None else records


def _duplicate_problems(records: list[ImageRecord]) -> dict[int, str]:
    seen: dict[str, str] = {}
    out = {}
    for i, r in enumerate(records):
        if r.image_id in seen:
            out[i] = f"{r.source}: duplicate image id {r.image_id!r} (also {seen[r.image_id]})"
        else:
            seen[r.image_id] = r.source
    return out


def _csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    cols = columns or sorted({k for r in rows for k in r})
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=cols, extrasaction="raise", lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


MANIFEST_FIRST = ["item_id", "file", "label", "split", "train_subset", "shard", "image_id", "patient_id", "image_label", "severity", "finding", "view", "laterality", "density", "source_file", "crop_box", "flipped"]


def _write_reports(out: Path, cfg: PrepareConfig, pre_rows: list[dict[str, Any]], summary: PreparedSummary) -> None:
    write_text_atomic(out / "preflight.csv", _csv_text(pre_rows, list(pre_rows[0]) if pre_rows else ["file", "status", "problems"]))
    write_json_atomic(out / "preflight.json", pre_rows)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(resolved_config(cfg), sort_keys=False))
    write_json_atomic(out / "summary.json", summary.as_dict())


def prepare(cfg: PrepareConfig, check_only: bool = False) -> PreparedSummary:
    """Run the whole preparation (or only the preflight scan) and return its summary."""
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    entry = ADAPTERS.entry(cfg.dataset.adapter)
    listing = entry.obj(**_absolute_args(entry.validate_args(cfg.dataset.args, where="dataset.args")))
    records = _select(sorted(listing.records, key=lambda r: r.image_id), cfg)
    strict = cfg.mode == "strict"
    if strict and listing.problems:
        p = listing.problems[0]
        raise PrepareError(f"{p.file}: {p.problem}")
    dups = _duplicate_problems(records)
    if strict and dups:
        raise PrepareError(next(iter(dups.values())))
    want_hash = cfg.near_duplicates.enabled if cfg.near_duplicates.enabled is not None else listing.near_duplicate_grouping

    unique = [r for i, r in enumerate(records) if i not in dups]
    with _Mapper(cfg.workers) as mapper:
        return _prepare_with(cfg, check_only, mapper, listing, records, unique, dups, want_hash, strict, t0, times)


def _prepare_with(
    cfg: PrepareConfig, check_only: bool, mapper: _Mapper, listing: Any, records: list[ImageRecord], unique: list[ImageRecord],
    dups: dict[int, str], want_hash: bool, strict: bool, t0: float, times: dict[str, float],
) -> PreparedSummary:
    """The phases after listing, on one mapper (so a process pool starts once per prepare())."""
    def first_problem(r: PreflightResult | TaskResult) -> str | None:
        return r.problems[0] if r.problems else None

    pre = mapper.map(_Preflight(cfg, want_hash), unique, first_problem if strict else None)
    times["preflight"] = time.perf_counter() - t0
    pre_by_id = {p.image_id: p for p in pre}
    pre_rows = [p.row() for p in pre]
    pre_rows += [{"file": records[i].source, "image_id": records[i].image_id, "status": "error", "problems": msg} for i, msg in dups.items()]
    pre_rows += [{"file": p.file, "image_id": "", "status": "error", "problems": p.problem} for p in listing.problems]
    excluded = [{"file": r["file"], "reason": r["problems"]} for r in pre_rows if r["status"] == "error"]

    dataset_warnings = []
    intents = Counter(p.meta.get("presentation_intent") for p in pre if p.meta.get("presentation_intent"))
    if len(intents) > 1:
        msg = f"mixed PresentationIntentType {dict(intents)}: processing and presentation images look different; set presentation_intent to keep one"
        if strict:
            raise PrepareError(msg)
        dataset_warnings.append(msg)

    ok_records = [r for r in unique if pre_by_id[r.image_id].status != "error"]
    groups: dict[str, str] = {}
    nd = cfg.near_duplicates
    nd_report: dict[str, Any] = {"enabled": bool(want_hash)}
    if want_hash:
        nd_report["rules"] = {"phash": f"perceptual hash distance <= {nd.max_hamming} bits",
                              "correlation": f"32x32 thumbnail correlation >= {nd.min_correlation}",
                              "second_check": (f"perceptual hash distance <= {nd.loose_hamming} bits and (thumbnail correlation >= "
                                               f"{nd.loose_correlation} or difference hash distance <= {nd.max_dhash} bits)"
                                               if nd.loose_hamming > nd.max_hamming else "off")}
    if want_hash and ok_records:
        ids = [r.image_id for r in ok_records]
        hashes = np.array([pre_by_id[i].phash for i in ids], dtype=np.uint64)
        dhashes = np.array([pre_by_id[i].dhash for i in ids], dtype=np.uint64)
        thumbs = np.stack([pre_by_id[i].thumbnail for i in ids])
        links = near_duplicate_links(ids, hashes, thumbs, nd.max_hamming, nd.min_correlation, dhashes=dhashes,
                                     loose_hamming=nd.loose_hamming, loose_correlation=nd.loose_correlation, max_dhash=nd.max_dhash)
        groups = links.groups(ids)
        nd_report.update(pairs_linked=links.counts(), images_in_groups=len(groups))
        # what the splits would do with pairs close in hash but not linked (the cases to inspect); 0 across splits for linked ones
        splits_now = assign_splits([SplitItem(r.image_id, r.patient_id, r.label, groups.get(r.image_id)) for r in ok_records],
                                   cfg.splits.fractions, cfg.seed)
        ii, jj, dd = hamming_pairs(hashes, nd.report_hamming)
        close = [(ids[i], ids[j], int(d)) for i, j, d in zip(ii, jj, dd)]
        across = [(a, b, d) for a, b, d in close if splits_now[a] != splits_now[b]]
        nd_report["close_pairs"] = {"within_bits": nd.report_hamming, "pairs": len(close),
                                    "in_one_group": sum(bool(groups.get(a)) and groups.get(a) == groups.get(b) for a, b, _ in close),
                                    "across_splits": len(across),
                                    "across_splits_by_distance": {str(k): v for k, v in sorted(Counter(d for *_, d in across).items())},
                                    "across_splits_examples": [[a, b, d] for a, b, d in across[:10]]}
    nd_report["groups"] = len(set(groups.values()))
    pseudonym = cfg.identifiers.pseudonymiser()
    id_report = cfg.identifiers.describe()

    def summary(items: list[dict[str, Any]], skipped: list[str]) -> PreparedSummary:
        by_split: dict[str, Counter] = defaultdict(Counter)
        patients: dict[str, set] = defaultdict(set)
        for it in items:
            by_split[it.get("split", "")][it["label"]] += 1
            patients[it.get("split", "")].add(it["patient_id"])
        times["total"] = time.perf_counter() - t0
        return PreparedSummary(
            output=str(cfg.output),
            dataset=cfg.dataset.adapter,
            task=cfg.task.name,
            mode=cfg.mode,
            check_only=check_only,
            inputs=len(pre_rows),
            ok=sum(r["status"] == "ok" for r in pre_rows),
            warnings=sum(r["status"] == "warning" for r in pre_rows),
            excluded=len(excluded),
            excluded_files=excluded,
            skipped=skipped,
            items=len(items),
            counts_by_label=dict(Counter(it["label"] for it in items)),
            counts_by_split={k: dict(v) for k, v in sorted(by_split.items())},
            images_by_label=dict(Counter(r.label for r in ok_records)),
            patients_by_split={k: len(v) for k, v in sorted(patients.items())},
            near_duplicate_groups=len(set(groups.values())),
            near_duplicates=nd_report,
            identifiers=id_report,
            dataset_warnings=dataset_warnings,
            workers=cfg.workers,
            seconds={k: round(v, 3) for k, v in times.items()},
        )

    if check_only:
        with atomic_dir(cfg.output) as out:
            _write_reports(out, cfg, pre_rows, summary([], []))
        return summary([], [])

    healthy_sides = sorted(s for p in pre for s in p.lesion_sides)
    with atomic_dir(cfg.output) as out:
        t1 = time.perf_counter()
        results = mapper.map(_Extract(cfg, out, healthy_sides), [(r, pre_by_id[r.image_id]) for r in ok_records], first_problem if strict else None)
        times["extract"] = time.perf_counter() - t1
        items: list[dict[str, Any]] = []
        skipped: list[str] = []
        for r in results:
            items.extend(r.rows)
            skipped.extend(r.skipped)
            for p in r.problems:
                excluded.append({"file": pre_by_id[r.image_id].file, "reason": p})
        _assign_splits(items, ok_records, groups, cfg)
        for it in items:  # the one place patient ids leave: every adapter's ids go through the policy
            it["patient_id"] = pseudonym(it["patient_id"])
        columns = MANIFEST_FIRST + sorted({k for it in items for k in it} - set(MANIFEST_FIRST))
        write_text_atomic(out / "manifest.csv", _csv_text(items, columns))
        s = summary(items, skipped)
        _write_reports(out, cfg, pre_rows, s)
    return s


def _assign_splits(items: list[dict[str, Any]], records: list[ImageRecord], groups: dict[str, str], cfg: PrepareConfig) -> None:
    """Split by image (so all patches of one image, patient and near-duplicate group stay together)."""
    split_items = [SplitItem(r.image_id, r.patient_id, r.label, groups.get(r.image_id)) for r in records]
    splits = assign_splits(split_items, cfg.splits.fractions, cfg.seed)
    subset = reduced_training_subset(split_items, splits, cfg.splits.train_fraction, cfg.seed)
    for it in items:
        it["split"] = splits[it["image_id"]]
        it["train_subset"] = int(it["image_id"] in subset)
        it["group"] = groups.get(it["image_id"], "")
    if cfg.splits.shards is not None:
        col = cfg.splits.shards.column
        missing = [it["item_id"] for it in items if it.get(col, "") == ""]
        if missing:
            raise PrepareError(f"splits.shards.column {col!r}: no value for {len(missing)} item(s), e.g. {missing[0]}")
        values = {it["item_id"]: it[col] for it in items}
        shards = assign_shards(values, cfg.splits.shards.n, [it["item_id"] for it in items if it["split"] == "train"])
        for it in items:
            it["shard"] = shards[it["item_id"]]
    else:
        for it in items:
            it["shard"] = 0


from breastgan.data import full_field as _full_field  # noqa: E402,F401  (registers the "full_field" task; imports this module)
