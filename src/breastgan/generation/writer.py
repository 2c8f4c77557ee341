"""Write generated images to disk: 8/16-bit PNG or float32 .npy, plus a manifest listing every file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from breastgan.data.io import write_image
from breastgan.utils.atomic import write_json_atomic

if TYPE_CHECKING:
    from breastgan.generation.loader import LoadedGenerator

FORMATS = {"png": ".png", "npy": ".npy"}


def image_name(index: int, fmt: str) -> str:
    return f"img_{index:08d}{FORMATS[fmt]}"


def write_images(
    gen: "LoadedGenerator",
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
) -> list[dict]:
    """Write images [start, stop) of the n-image set for ``seed``; returns one record per file.

    Every image is written atomically; the manifest (``manifest.json``) is written last, so a folder
    with a manifest is complete.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "png" and bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16 for PNG, got {bit_depth}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = n if stop is None else stop
    records = []
    for a in range(start, stop, batch_size):
        b = min(stop, a + batch_size)
        lab = labels[a:b] if isinstance(labels, (list, tuple)) else labels
        images = gen.sample_range(a, b, seed=seed, labels=lab, batch_size=batch_size)
        for k in range(images.shape[0]):
            name = image_name(a + k, fmt)
            write_image(out / name, images[k, 0].numpy(), bit_depth=bit_depth)
            rec = {"file": name, "index": a + k, "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
            records.append(rec)
    if write_manifest:
        write_json_atomic(out / "manifest.json", {
            "count": len(records), "seed": seed, "format": fmt, "bit_depth": bit_depth if fmt == "png" else 32,
            "value_range": [0.0, 1.0], "sources": gen.sources, "labels": labels if not hasattr(labels, "tolist") else labels.tolist(),
            "generator": {"arch": gen.meta.get("arch"), "args": gen.meta.get("args")}, "files": records,
        })
    return records


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "manifest.json").read_text())
