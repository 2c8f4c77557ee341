"""Image and mask readers, chosen by file suffix through the ``READERS`` registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from breastgan.data.dicom import VoiChoice, read_dicom
from breastgan.data.io import ImageReadError, read_image
from breastgan.registry import Registry


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    recipe: str
    bit_depth: int
    meta: dict[str, Any] = field(default_factory=dict)  # DICOM tags worth recording; empty for rasters


class DicomReaderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voi: VoiChoice = "auto"
    window_index: int = 0
    patient_salt: str = "breastgan"


class RasterReaderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rgb_policy: Literal["luma", "require-equal", "error"] = "luma"


READERS: Registry[Any] = Registry("image reader")


@READERS.register("dicom", args=DicomReaderArgs, summary="DICOM via pydicom: modality LUT, VOI, MONOCHROME1 inversion")
def load_dicom(path: str | Path, voi: VoiChoice = "auto", window_index: int = 0, patient_salt: str = "breastgan") -> LoadedImage:
    img = read_dicom(path, voi=voi, window_index=window_index, patient_salt=patient_salt)
    m = img.meta
    meta = {
        "presentation_intent": m.presentation_intent,
        "laterality": m.laterality,
        "view": m.view,
        "pixel_spacing_mm": m.pixel_spacing_mm[1] if m.pixel_spacing_mm else None,
        "manufacturer": m.manufacturer,
        "body_part": m.body_part,
        "patient_hash": m.patient_hash,
    }
    return LoadedImage(img.pixels, img.recipe_text, m.bits_stored, meta)


@READERS.register("raster", args=RasterReaderArgs, summary="PNG/TIFF/PGM/JPEG/.npy keeping 16-bit precision")
def load_raster(path: str | Path, rgb_policy: str = "luma") -> LoadedImage:
    img = read_image(path, rgb_policy=rgb_policy)
    recipe = f"{img.source_mode} {img.bit_depth}-bit / {2 ** img.bit_depth - 1 if img.bit_depth <= 16 else 1}"
    if img.converted_from_rgb:
        recipe += f"; RGB to grey ({rgb_policy})"
    return LoadedImage(img.pixels, recipe, img.bit_depth)


SUFFIX_READERS = {".dcm": "dicom", ".dicom": "dicom", "": "dicom"}


def reader_for(path: str | Path) -> str:
    """DICOM files often have no suffix at all (INbreast, VinDr): those go to the DICOM reader."""
    return SUFFIX_READERS.get(Path(path).suffix.lower(), "raster")


def load_image(path: str | Path, reader_args: dict[str, dict[str, Any]] | None = None) -> LoadedImage:
    name = reader_for(path)
    args = READERS.entry(name).validate_args((reader_args or {}).get(name)).model_dump()
    return READERS.get(name)(path, **args)


@dataclass(frozen=True)
class LoadedMask:
    mask: np.ndarray  # bool (H, W)
    notes: tuple[str, ...] = ()


def read_mask(path: str | Path) -> LoadedMask:
    """A lesion mask as bool: any non-zero sample is lesion.

    BUSI ships 1-bit, 8-bit grey 0/255, RGB and RGBA masks; RGBA ones are flattened (alpha 0 means
    "no lesion") and the note is kept so the preflight report shows it.
    """
    path = Path(path)
    if reader_for(path) == "dicom":
        from breastgan.data.dicom import read_dicom as _rd

        return LoadedMask(_rd(path, voi="none").pixels > 0)
    if path.suffix.lower() in (".npy", ".tif", ".tiff"):
        return LoadedMask(read_image(path).pixels > 0)
    if not path.is_file():
        raise ImageReadError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im.convert("RGBA") if mode in ("RGBA", "LA", "P", "PA") else im)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot decode mask ({type(exc).__name__}: {exc})") from exc
    notes: tuple[str, ...] = ()
    if arr.ndim == 3 and arr.shape[-1] == 4:
        mask = (arr[..., :3].max(axis=-1) > 0) & (arr[..., 3] > 0)
        if mode in ("RGBA", "LA", "PA"):
            notes = (f"{path.name}: {mode} mask flattened (non-zero colour with alpha > 0 is lesion)",)
    elif arr.ndim == 3:
        mask = arr.max(axis=-1) > 0
    else:
        mask = arr > 0
    return LoadedMask(mask, notes)
