"""Reading and writing greyscale images without losing bit depth.

Why not ``PIL.Image.open(p).convert("L")``: it silently truncates 16-bit PNG/TIFF to 8 bits, the
pitfall ``conventions.md`` warns about. Here every decode states the bit depth it found, scales by
that depth's maximum, and refuses what it cannot represent instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from breastgan.utils.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".pnm", ".jpg", ".jpeg", ".npy")


class ImageReadError(ValueError):
    """An image file could not be decoded as expected; the message names the file and the problem."""


@dataclass(frozen=True)
class DecodedImage:
    """A greyscale image as float32 in [0, 1] plus what was done to get there."""

    pixels: np.ndarray  # float32, shape (H, W), values in [0, 1]
    bit_depth: int  # bits of the stored samples (8, 16, 32 for float inputs)
    source_mode: str  # e.g. "L", "I;16", "RGB", "uint16", "float32"
    converted_from_rgb: bool


def _rgb_to_grey(arr: np.ndarray, path: Path, rgb_policy: str) -> np.ndarray:
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        if not np.all(alpha == alpha.max()):
            raise ImageReadError(f"{path}: RGBA image with a non-constant alpha channel; flatten it first")
        arr = arr[..., :3]
    if rgb_policy == "error":
        raise ImageReadError(f"{path}: colour image (shape {arr.shape}); expected greyscale (rgb_policy='error')")
    if rgb_policy == "require-equal" and not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])):
        raise ImageReadError(f"{path}: colour image whose channels differ; expected grey stored as RGB (rgb_policy='require-equal')")
    # ITU-R BT.601 luma, the same weights Pillow's convert('L') uses, kept in float (no rounding)
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


def _refuse_truncating_colour_decode(im: Image.Image, path: Path) -> None:
    """Pillow has no 16-bit colour mode: it decodes 48/64-bit PNG and 16-bit PPM colour to 8 bits."""
    if im.mode not in ("RGB", "RGBA", "LA", "PA"):
        return
    for tile in im.tile:
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        maxval = args[1] if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) else 0
        if ";16" in str(rawmode) or maxval > 255:
            raise ImageReadError(
                f"{path}: 16-bit colour image; Pillow would silently reduce it to 8 bits per channel. "
                "Convert it to 16-bit greyscale (or a 16-bit RGB TIFF, read with tifffile) first"
            )


def read_image(path: str | Path, *, rgb_policy: str = "luma") -> DecodedImage:
    """Decode a PNG/TIFF/PGM/JPEG/.npy image to float32 [0, 1] greyscale, keeping 16-bit precision.

    ``rgb_policy``: 'luma' (BT.601 weights), 'require-equal' (only grey stored as RGB), or 'error'.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            mode = str(arr.dtype)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            mode = str(arr.dtype)
        else:
            with Image.open(path) as im:
                _refuse_truncating_colour_decode(im, path)
                im.load()
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                if mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow/tifffile raise many types for truncated or corrupt files
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc

    converted = False
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha: accept only an opaque (constant) alpha
        if not np.all(arr[..., 1] == arr[..., 1].max()):
            raise ImageReadError(f"{path}: grey+alpha image with a non-constant alpha channel; flatten it first")
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        converted = True
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D greyscale or RGB image, got array shape {arr.shape}")

    if arr.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif arr.dtype in (np.uint16, np.dtype(">u2")) or mode.startswith("I;16"):
        bits, scale = 16, 65535.0
    elif arr.dtype == np.int32 and mode == "I":  # Pillow decodes 16-bit PNG as mode I on some versions
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(f"{path}: 32-bit integer image with values outside 0..65535; unsupported")
        bits, scale = 16, 65535.0
    elif arr.dtype == np.bool_:
        bits, scale = 1, 1.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ImageReadError(f"{path}: float image must be finite and in [0, 1] (got {arr.min()}..{arr.max()})")
        bits, scale = 32, 1.0
    else:
        raise ImageReadError(f"{path}: unsupported sample type {arr.dtype} (mode {mode}); expected 8/16-bit or float")

    out = arr.astype(np.float32) / np.float32(scale)
    if converted:
        out = _rgb_to_grey(out, path, rgb_policy).astype(np.float32)
    # PGM with maxval other than 255/65535 (e.g. 4095) needs nothing here: Pillow rescales it to the
    # full 8- or 16-bit range on decode.
    return DecodedImage(np.ascontiguousarray(out), bits, mode, converted)


def write_image(path: str | Path, pixels: np.ndarray, *, bit_depth: int = 16) -> None:
    """Write a [0, 1] float greyscale image atomically as 8/16-bit PNG (or .npy float32)."""
    path = Path(path)
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D greyscale array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: refusing to write non-finite pixel values")
    arr = np.clip(arr, 0.0, 1.0)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        elif suffix == ".png":
            if bit_depth == 8:
                Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L").save(tmp, format="PNG")
            elif bit_depth == 16:
                q = np.round(arr * 65535.0).astype(np.uint16)
                Image.fromarray(q).save(tmp, format="PNG")
            else:
                raise ValueError(f"{path}: bit_depth must be 8 or 16, got {bit_depth}")
        else:
            raise ValueError(f"{path}: unsupported output format {suffix!r}; use .png or .npy")
