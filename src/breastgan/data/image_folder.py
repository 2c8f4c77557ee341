"""A folder of greyscale images (PNG/TIFF/PGM, 8 or 16 bit) with optional CSV labels.

Every policy is explicit and every problem is an error naming the file and the option involved:
an unreadable image, a CSV row for a file that is not there, an image with no CSV row, an unknown
label, images of different sizes when no ``size`` is given, an aspect-ratio change that was not
asked for. Nothing is dropped silently; files whose extension is not listed in ``extensions`` are
not images of this dataset (the CSV itself, notes, masks stored as .npy, ...).

Decoding goes through :func:`breastgan.data.io.read_image`, so 16-bit images keep 16-bit precision.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from breastgan.data.base import DATASETS, DatasetInfo
from breastgan.data.io import IMAGE_SUFFIXES, ImageReadError, read_image

Side = Annotated[int, Field(ge=1, le=16384)]
AspectPolicy = Literal["error", "stretch", "center_crop", "pad"]


class ImageFolderError(ValueError):
    """The folder, its CSV or the options do not describe a consistent dataset."""


class ImageFolderArgs(BaseModel):
    """Options of the ``image_folder`` dataset."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(..., description="folder holding the images")
    recursive: bool = Field(True, description="also take images from sub-folders")
    extensions: list[str] = Field([".png", ".tif", ".tiff", ".pgm"], min_length=1, description="image file suffixes")
    labels_csv: str | None = Field(None, description="CSV of labels; a relative path is taken relative to root")
    filename_column: str = Field("filename", description="CSV column with the image path relative to root")
    label_column: str = Field("label", description="CSV column with the label")
    class_names: list[str] | None = Field(
        None, min_length=1, description="label strings in class-index order; null: sorted labels found in the CSV"
    )
    size: tuple[Side, Side] | None = Field(None, description="[H, W] to resize to; null: all images must share one size")
    aspect: AspectPolicy = Field(
        "error", description="when the aspect ratio must change to reach size: error, stretch, center_crop or pad (black)"
    )
    rgb_policy: Literal["luma", "require-equal", "error"] = Field("luma", description="colour images: BT.601 luma, only grey-as-RGB, or refuse")
    cache: bool = Field(True, description="decode all images once and keep them in memory")

    @field_validator("extensions")
    @classmethod
    def _known_extensions(cls, value: list[str]) -> list[str]:
        normalised = [e.lower() if e.startswith(".") else "." + e.lower() for e in value]
        unknown = [e for e in normalised if e not in IMAGE_SUFFIXES]
        if unknown:
            raise ValueError(f"unsupported extension(s) {unknown}; readable: {list(IMAGE_SUFFIXES)}")
        return normalised


def list_images(root: Path, extensions: list[str], recursive: bool) -> list[Path]:
    """Image files under ``root`` as paths relative to it, sorted by their POSIX form."""
    if not root.is_dir():
        raise ImageFolderError(f"root: {root} is not a folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = [p.relative_to(root) for p in candidates if p.is_file() and p.suffix.lower() in extensions]
    if not files:
        where = "under" if recursive else "directly in"
        raise ImageFolderError(f"root: no files with extensions {extensions} {where} {root}")
    return sorted(files, key=lambda p: p.as_posix())


def read_label_csv(csv_path: Path, filename_column: str, label_column: str) -> dict[str, tuple[str, int]]:
    """Map each CSV filename (POSIX, relative to root) to (label string, CSV line number)."""
    if not csv_path.is_file():
        raise ImageFolderError(f"labels_csv: {csv_path} not found")
    rows: dict[str, tuple[str, int]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for column, option in ((filename_column, "filename_column"), (label_column, "label_column")):
            if column not in header:
                raise ImageFolderError(f"{csv_path}: {option}: no column {column!r}; columns are {header}")
        for row in reader:
            line = reader.line_num
            name = (row.get(filename_column) or "").strip()
            label = (row.get(label_column) or "").strip()
            if not name:
                raise ImageFolderError(f"{csv_path}:{line}: empty {filename_column!r}")
            if not label:
                raise ImageFolderError(f"{csv_path}:{line}: {name}: empty {label_column!r}")
            key = Path(name).as_posix().removeprefix("./")
            if key in rows:
                raise ImageFolderError(f"{csv_path}:{line}: {key} already labelled on line {rows[key][1]}")
            rows[key] = (label, line)
    if not rows:
        raise ImageFolderError(f"{csv_path}: no data rows")
    return rows


def sorted_class_names(labels: set[str]) -> list[str]:
    """Label strings in class-index order: numeric order when all are integers, else lexical."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def same_aspect_ratio(shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """True when scaling ``shape`` to the target width leaves its height within one pixel of the target."""
    (height, width), (target_h, target_w) = shape, size
    return abs(height * target_w / width - target_h) <= 1.0 and abs(width * target_h / height - target_w) <= 1.0


def aspect_error(shape: tuple[int, int], size: tuple[int, int], where: str) -> ImageFolderError:
    return ImageFolderError(
        f"{where}: size {shape[0]}x{shape[1]} has a different aspect ratio from the target size {size[0]}x{size[1]}; "
        "set aspect to stretch, center_crop or pad"
    )


def resize_image(pixels: torch.Tensor, size: tuple[int, int], aspect: AspectPolicy, where: str) -> torch.Tensor:
    """Resize a (1, H, W) image to ``size``: area averaging when shrinking, bilinear when enlarging.

    When the aspect ratio differs (by more than one pixel's worth), ``aspect`` decides: crop the
    centre to the target ratio, pad it with black, stretch, or raise an error naming ``where``.
    """
    height, width = pixels.shape[-2:]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return pixels
    if not same_aspect_ratio((height, width), size):
        if aspect == "error":
            raise aspect_error((height, width), size, where)
        if aspect in ("center_crop", "pad"):
            scale = min(height / target_h, width / target_w) if aspect == "center_crop" else max(height / target_h, width / target_w)
            box_h, box_w = round(target_h * scale), round(target_w * scale)
            top, left = (height - box_h) // 2, (width - box_w) // 2
            if aspect == "center_crop":
                pixels = pixels[:, top : top + box_h, left : left + box_w]
            else:
                pad_top, pad_left = -top, -left
                pixels = F.pad(pixels, (pad_left, box_w - width - pad_left, pad_top, box_h - height - pad_top))
            height, width = box_h, box_w
    batch = pixels[None]
    if target_h <= height and target_w <= width:
        out = F.interpolate(batch, size=(target_h, target_w), mode="area")
    else:
        # Enlarging (at least along one axis): bilinear; antialias covers an axis that still shrinks.
        out = F.interpolate(batch, size=(target_h, target_w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)


def probe_image(path: Path) -> tuple[tuple[int, int], int]:
    """(H, W) and bits per sample from the file header, without decoding the pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return (int(page.shape[0]), int(page.shape[1])), int(page.dtype.itemsize * 8)
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return (int(array.shape[0]), int(array.shape[1])), int(array.dtype.itemsize * 8)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            return (height, width), 16 if im.mode.startswith("I") else 8
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from exc


@DATASETS.register("image_folder", args=ImageFolderArgs, summary="A folder of 8/16-bit greyscale PNG/TIFF/PGM images with optional CSV labels")
class ImageFolderDataset:
    """Images from a folder as (1, H, W) float32 in [0, 1] with integer labels."""

    def __init__(self, **options: object):
        self.args = args = ImageFolderArgs.model_validate(options)
        self.root = Path(args.root).expanduser()
        self.files = list_images(self.root, args.extensions, args.recursive)
        self.class_names, labels = self._assign_labels()
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self._images: torch.Tensor | None = None
        self._fingerprint: str | None = None

        if args.cache:
            decoded = [self._decode(i) for i in range(len(self.files))]
            shapes = [tuple(d[0].shape[-2:]) for d in decoded]
            self._check_common_size(shapes)
            self._images = torch.stack([self._fit(pixels, i) for i, (pixels, _) in enumerate(decoded)])
            bit_depth = max(bits for _, bits in decoded)
        else:
            probes = [probe_image(self.root / f) for f in self.files]
            self._check_common_size([shape for shape, _ in probes])
            bit_depth = max(bits for _, bits in probes)
            if args.size is not None and args.aspect == "error":
                for index, (shape, _) in enumerate(probes):  # fail now, not in the middle of training
                    if not same_aspect_ratio(shape, args.size):
                        raise aspect_error(shape, args.size, str(self.root / self.files[index]))
        image_size = tuple(args.size) if args.size is not None else tuple(self._native_size)
        self.info = DatasetInfo(
            name="image_folder",
            image_size=image_size,  # type: ignore[arg-type]
            class_names=tuple(self.class_names),
            bit_depth=bit_depth,
            extra={"root": str(self.root), "count": len(self.files)},
        )

    def _assign_labels(self) -> tuple[list[str], list[int]]:
        args = self.args
        if args.labels_csv is None:
            if args.class_names is not None and len(args.class_names) != 1:
                raise ImageFolderError("class_names: without labels_csv every image has label 0; give one class name or a labels_csv")
            return list(args.class_names or ["image"]), [0] * len(self.files)
        csv_path = Path(args.labels_csv).expanduser()
        csv_path = csv_path if csv_path.is_absolute() else self.root / csv_path
        rows = read_label_csv(csv_path, args.filename_column, args.label_column)
        present = {f.as_posix() for f in self.files}
        for name, (_, line) in rows.items():
            if name not in present:
                raise ImageFolderError(
                    f"{csv_path}:{line}: {args.filename_column} {name!r} is not an image under {self.root} "
                    f"(extensions {args.extensions}, recursive={args.recursive})"
                )
        unlabelled = [f.as_posix() for f in self.files if f.as_posix() not in rows]
        if unlabelled:
            shown = ", ".join(unlabelled[:5]) + (f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else "")
            raise ImageFolderError(f"{csv_path}: no row for image(s) {shown} (column {args.filename_column!r})")
        names = list(args.class_names) if args.class_names is not None else sorted_class_names({lab for lab, _ in rows.values()})
        index_of = {name: i for i, name in enumerate(names)}
        labels = []
        for f in self.files:
            label, line = rows[f.as_posix()]
            if label not in index_of:
                raise ImageFolderError(f"{csv_path}:{line}: {f.as_posix()}: {args.label_column} {label!r} is not one of class_names {names}")
            labels.append(index_of[label])
        return names, labels

    def _check_common_size(self, shapes: list[tuple[int, ...]]) -> None:
        self._native_size = shapes[0]
        if self.args.size is not None:
            return
        for index, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ImageFolderError(
                    f"{self.root / self.files[index]}: size {shape[0]}x{shape[1]} differs from "
                    f"{shapes[0][0]}x{shapes[0][1]} of {self.files[0].as_posix()}; set size: [H, W] to resize"
                )

    def _decode(self, index: int) -> tuple[torch.Tensor, int]:
        decoded = read_image(self.root / self.files[index], rgb_policy=self.args.rgb_policy)
        return torch.from_numpy(decoded.pixels)[None], decoded.bit_depth

    def _fit(self, pixels: torch.Tensor, index: int) -> torch.Tensor:
        if self.args.size is None:
            return pixels
        return resize_image(pixels, self.args.size, self.args.aspect, str(self.root / self.files[index]))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._images is not None:
            return self._images[index], int(self.labels[index])
        pixels, _ = self._decode(index)
        if self.args.size is None and tuple(pixels.shape[-2:]) != tuple(self._native_size):
            raise ImageFolderError(f"{self.root / self.files[index]}: size changed since the dataset was opened")
        return self._fit(pixels, index), int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) images and (B,) labels; one indexing operation when images are cached."""
        if self._images is not None:
            return self._images[indices], self.labels[indices]
        return torch.stack([self[int(i)][0] for i in indices]), self.labels[indices]

    def fingerprint(self) -> str:
        """sha256 over the options, and each image's relative path, file bytes and label."""
        if self._fingerprint is None:
            options = self.args.model_dump(mode="json", exclude={"root", "cache"})  # location and caching do not change content
            h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
            h.update(json.dumps(self.class_names).encode())
            for rel, label in zip(self.files, self.labels.tolist()):
                h.update(rel.as_posix().encode() + b"\0")
                h.update(hashlib.sha256((self.root / rel).read_bytes()).digest())
                h.update(label.to_bytes(8, "little"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.root}, {len(self)} images, size={self.info.image_size}, classes={list(self.class_names)})"
