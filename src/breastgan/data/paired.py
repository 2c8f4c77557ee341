"""Two-domain data for image-to-image translation.

Paired (pix2pix): the ``paired`` dataset - a CSV manifest that pairs files (columns ``a`` and
``b``, paths relative to the manifest's folder) or two folders whose images are matched by their
relative file name. Each item is one (2, H, W) image: channel 0 the domain-A image, channel 1 its
domain-B partner, so a batch, its flips and its random crops keep the pair aligned by construction.
Every problem is an error naming the file: a name present in one folder only, a manifest row whose
file is missing, partners of different sizes, images of different sizes.

Unpaired (CycleGAN): two ordinary dataset specs (``{dataset: image_folder, root: ...}``), checked
by :func:`build_domain`; the two domains need not have the same number of images.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from breastgan.data.base import DATASETS, DatasetInfo, ImageDataset, TensorDataset, build_dataset
from breastgan.data.io import IMAGE_SUFFIXES, read_image


class PairedDataError(ValueError):
    """The manifest or the folders do not describe aligned pairs; the message names the file."""


class PairedArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: str | None = Field(None, description="CSV with columns a, b (paths relative to the CSV's folder)")
    folder_a: str | None = Field(None, description="domain-A images (matched to folder_b by relative file name)")
    folder_b: str | None = Field(None, description="domain-B images")
    extensions: list[str] = Field([".png", ".tif", ".tiff", ".pgm", ".npy"], min_length=1)
    rgb_policy: str = Field("error", description="colour inputs: error (default: grey only), require-equal or luma")

    @model_validator(mode="after")
    def _one_source(self) -> "PairedArgs":
        folders = self.folder_a is not None or self.folder_b is not None
        if (self.manifest is not None) == folders:
            raise ValueError("paired: give either manifest, or both folder_a and folder_b")
        if folders and (self.folder_a is None or self.folder_b is None):
            raise ValueError("paired: folder_a and folder_b go together")
        return self


def _list(root: Path, extensions: list[str]) -> dict[str, Path]:
    if not root.is_dir():
        raise PairedDataError(f"{root}: not a folder")
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in extensions}


def pair_files(args: PairedArgs) -> list[tuple[str, Path, Path]]:
    """(name, path_a, path_b) for every pair, in a fixed (sorted) order."""
    if args.manifest is not None:
        man = Path(args.manifest)
        if not man.is_file():
            raise PairedDataError(f"manifest: {man} not found")
        with man.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"a", "b"} <= set(reader.fieldnames):
                raise PairedDataError(f"{man}: needs columns 'a' and 'b', has {reader.fieldnames}")
            pairs = []
            for line, row in enumerate(reader, start=2):
                pa, pb = man.parent / row["a"], man.parent / row["b"]
                for col, p in (("a", pa), ("b", pb)):
                    if not p.is_file():
                        raise PairedDataError(f"{man}: line {line}, column {col}: {p} not found")
                pairs.append((row["a"], pa, pb))
        if not pairs:
            raise PairedDataError(f"{man}: no rows")
        return pairs
    ext = [e.lower() for e in args.extensions]
    a, b = _list(Path(args.folder_a), ext), _list(Path(args.folder_b), ext)  # type: ignore[arg-type]
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise PairedDataError(f"paired folders {args.folder_a} and {args.folder_b} do not match by file name: "
                              f"only in folder_a {only_a[:5]}{'...' if len(only_a) > 5 else ''}, "
                              f"only in folder_b {only_b[:5]}{'...' if len(only_b) > 5 else ''}")
    if not a:
        raise PairedDataError(f"folder_a: no images with extensions {ext} under {args.folder_a}")
    return [(name, a[name], b[name]) for name in sorted(a)]


@DATASETS.register("paired", args=PairedArgs, summary="pix2pix pairs (manifest CSV a,b or two folders matched by name) as (2, H, W): A, B")
class PairedDataset(TensorDataset):
    def __init__(self, **options: Any):
        args = PairedArgs.model_validate(options)
        pairs = pair_files(args)
        images, depth, shape = [], 8, None
        for name, pa, pb in pairs:
            da, db = read_image(pa, rgb_policy=args.rgb_policy), read_image(pb, rgb_policy=args.rgb_policy)
            if da.pixels.shape != db.pixels.shape:
                raise PairedDataError(f"pair {name!r}: {pa} is {da.pixels.shape} but {pb} is {db.pixels.shape}; partners must have one size")
            if shape is None:
                shape = da.pixels.shape
            elif da.pixels.shape != shape:
                raise PairedDataError(f"pair {name!r}: {pa} is {da.pixels.shape}, the first pair is {shape}; every pair must have one size")
            depth = max(depth, da.bit_depth, db.bit_depth)
            images.append(np.stack([da.pixels, db.pixels]))
        x = torch.from_numpy(np.stack(images))
        self.names = [n for n, _, _ in pairs]
        info = DatasetInfo(name="paired", image_size=(int(shape[0]), int(shape[1])), channels=2, class_names=("pair",),  # type: ignore[index]
                           bit_depth=min(depth, 16), extra={"channels": ["a", "b"], "names": self.names[:8]})
        src = hashlib.sha256("\n".join(self.names).encode()).hexdigest()
        super().__init__(x, torch.zeros(len(pairs), dtype=torch.long), info, source=f"paired:{src}")


def build_domain(spec: Any, where: str) -> ImageDataset:
    """A dataset from a ``{dataset: name, **options}`` spec given as a recipe option (CycleGAN's domains)."""
    if not isinstance(spec, dict) or "dataset" not in spec:
        raise ValueError(f"{where}: expected a dataset spec like {{dataset: image_folder, root: ...}}, got {spec!r}")
    opts = {k: v for k, v in spec.items() if k != "dataset"}
    if spec["dataset"] not in DATASETS:
        raise ValueError(f"{where}.dataset: {spec['dataset']!r} is not a dataset; available: {', '.join(DATASETS.names())}")
    ds = build_dataset(spec["dataset"], DATASETS.entry(spec["dataset"]).validate_args(opts, where).model_dump())
    return ds


__all__ = ["PairedDataset", "PairedArgs", "PairedDataError", "build_domain", "pair_files", "IMAGE_SUFFIXES"]
