"""Write generated images to disk: 8/16-bit grey PNG or float32 .npy, plus a manifest listing every file.

PNG holds grey images only: a model making 1-channel images gets grey PNGs; any other channel count
is refused with the count named (nothing is dropped silently), and ``.npy`` keeps every channel:
(H, W) arrays for 1-channel images (as breastgan always wrote them), (C, H, W) otherwise.

An output folder is never mixed with an earlier run's images (:func:`prepare_output`): a folder that
is not empty is refused unless ``overwrite``, which removes what an earlier ``generate`` wrote there
(the files its manifest lists, files named like generated images, leftover temporary files) and
refuses to touch anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from breastgan.data.io import write_image
from breastgan.utils.atomic import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from breastgan.generation.kinds import LoadedModel

FORMATS = {"png": ".png", "npy": ".npy", "dicom": ".dcm"}  # dicom: Secondary Capture (generation/dicom_out.py)
MANIFEST = "manifest.json"
# what write_images / atomic_path put into an output folder: images, the manifest, temporaries of both
_GENERATED = re.compile(r"^(img_\d{8}\.(png|npy|dcm)|manifest\.json)$")
_TEMPORARY = re.compile(r"^\.(img_\d{8}\.(png|npy|dcm)|manifest\.json)\..+\.tmp$")


class OutputFolderError(ValueError):
    """An output folder that cannot be written without mixing or destroying other files; the message says why."""


def _listed_by_manifest(out: Path) -> set[str]:
    """File names an earlier generate's manifest lists (empty when there is none or it is not one)."""
    try:
        obj = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    files = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(files, list):
        return set()
    return {f["file"] for f in files if isinstance(f, dict) and isinstance(f.get("file"), str) and "/" not in f["file"]}


def prepare_output(out_dir: str | Path, *, overwrite: bool = False, check_only: bool = False) -> Path:
    """Make ``out_dir`` ready for a new image set: created if missing, refused if not empty (unless ``overwrite``).

    With ``overwrite`` the files an earlier generate wrote are removed first, so the folder then holds
    exactly what the new manifest lists; any other entry (a sub-folder, a file generate never writes)
    is refused and nothing is removed. ``check_only``: raise if the folder would be refused, change
    nothing (so a command can refuse before loading a model, and remove old images only after it loaded).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder; give a folder for the images")
    if not out.exists():
        if not check_only:
            out.mkdir(parents=True, exist_ok=True)
        return out
    entries = sorted(os.scandir(out), key=lambda e: e.name)
    if not entries:
        return out
    names = [e.name for e in entries]
    if not overwrite:
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
        raise OutputFolderError(f"{out}: output folder is not empty ({shown}); new images would mix with these. "
                                "Give an empty or new folder, or --overwrite (overwrite=True) to replace what an earlier generate wrote")
    listed = _listed_by_manifest(out)
    foreign = [e.name for e in entries if not (e.is_file(follow_symlinks=False)
                                               and (e.name in listed or _GENERATED.match(e.name) or _TEMPORARY.match(e.name)))]
    if foreign:
        raise OutputFolderError(f"{out}: --overwrite only replaces what an earlier generate wrote; this folder also holds "
                                f"{foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which it did not write. Nothing was removed")
    if check_only:
        return out
    # the manifest first: an interrupted clean-up leaves a folder without a manifest, never one whose manifest lies
    for name in sorted(names, key=lambda n: n != MANIFEST):
        (out / name).unlink()
    return out


def image_name(index: int, fmt: str) -> str:
    return f"img_{index:08d}{FORMATS[fmt]}"


def check_output(channels: int, fmt: str, bit_depth: int) -> None:
    """Refuse a format/bit depth/channel count combination before anything is written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "dicom":
        from breastgan.generation.dicom_out import check_dicom

        check_dicom(channels, bit_depth)
    if fmt == "png" and bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16 for PNG, got {bit_depth}")
    if fmt == "png" and channels != 1:
        raise ValueError(f"PNG output holds 1-channel (grey) images; this model makes {channels}-channel images: "
                         "use format 'npy', which keeps every channel")


def write_array(path: Path, image: np.ndarray, fmt: str, bit_depth: int) -> None:
    """One (C, H, W) image in [0, 1], written atomically."""
    if image.ndim != 3:
        raise ValueError(f"{path}: expected a (C, H, W) image, got shape {image.shape}")
    check_output(image.shape[0], fmt, bit_depth)
    if image.shape[0] == 1:
        write_image(path, image[0], bit_depth=bit_depth)  # grey PNG, or an (H, W) .npy
        return
    arr = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: refusing to write non-finite pixel values")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.clip(arr, 0.0, 1.0))


def output_manifest(gen: "LoadedModel", files: list[dict], *, seed: int, fmt: str, bit_depth: int, labels: Any) -> dict[str, Any]:
    """The folder manifest; written by one process (:func:`write_images`) or rank 0 (generation.distributed) alike."""
    return {
        "count": len(files), "seed": seed, "format": fmt, "bit_depth": bit_depth if fmt in ("png", "dicom") else 32, "channels": gen.channels,
        "value_range": [0.0, 1.0], "sources": gen.sources, "labels": labels if not hasattr(labels, "tolist") else labels.tolist(),
        "generator": gen.describe(), "files": files,
    }


def write_images(
    gen: "LoadedModel",
    out_dir: str | Path,
    *,
    n: int,
    seed: int = 0,
    labels=None,
    fmt: str = "png",
    bit_depth: int = 16,
    batch_size: int = 64,
    start: int = 0,
    stop: int | None = None,
    write_manifest: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Write images [start, stop) of the n-image set for ``seed``; returns one record per file.

    ``labels`` (class names or indices) apply to noise generators only. Every image is written
    atomically; the manifest (``manifest.json``) is written last, so a folder with a manifest is complete.
    Writing the whole set (``start`` 0, with the manifest) first checks the folder with
    :func:`prepare_output` (``overwrite``); writers of one share of a set (generation.distributed)
    have it checked once, before any share is written.
    """
    check_output(gen.channels, fmt, bit_depth)
    if labels is not None and getattr(gen, "kind", "noise") != "noise":
        raise ValueError(f"labels apply to noise generators; this is a {gen.kind} model")
    gen.check_capacity(n)
    out = Path(out_dir)
    if start == 0 and write_manifest:
        prepare_output(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    stop = n if stop is None else stop
    records = []
    for a in range(start, stop, batch_size):
        b = min(stop, a + batch_size)
        if labels is not None:
            lab = labels[a:b] if isinstance(labels, (list, tuple)) else labels
            images = gen.sample_range(a, b, seed=seed, labels=lab, batch_size=batch_size)
        else:
            images = gen.synthesize_range(a, b, seed=seed, batch_size=batch_size)
        for k in range(images.shape[0]):
            name = image_name(a + k, fmt)
            extra = {}
            if fmt == "dicom":
                from breastgan.generation.dicom_out import write_dicom_image

                extra = write_dicom_image(out / name, images[k].numpy(), gen, index=a + k, seed=seed, labels=labels, bit_depth=bit_depth)
            else:
                write_array(out / name, images[k].numpy(), fmt, bit_depth)
            rec = {"file": name, "index": a + k, "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(), **extra}
            records.append(rec)
    if write_manifest:
        write_json_atomic(out / MANIFEST, output_manifest(gen, records, seed=seed, fmt=fmt, bit_depth=bit_depth, labels=labels))
    return records
