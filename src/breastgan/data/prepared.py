"""A prepared dataset folder (written by ``breastgan prepare``) as a training dataset.

Training configs point at it with ``data: {source: {dataset: prepared, path: ..., split: train}}``.
Images are loaded once into memory (prepared sets are patches or downsized images), so batches
come from one tensor index (``get_batch``) instead of per-item Python calls.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset
from breastgan.data.io import read_image


class PreparedArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path
    split: str | None = "train"  # None: every row
    label_column: str | None = "label"  # None: unlabelled (label 0 for all)
    class_names: list[str] | None = None  # order of the class indices; default: sorted values of the whole manifest
    train_subset_only: bool = False  # the reduced training fraction chosen at prepare time
    shard: int | None = None  # only this shard (multi-discriminator training)
    where: dict[str, list[str]] = {}  # extra filters: column -> accepted values


def read_manifest(path: Path) -> list[dict[str, str]]:
    manifest = Path(path) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; is {path} a folder written by `breastgan prepare` (not a --check run)?")
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


class PreparedDataset(TensorDataset):
    """Rows of a prepared dataset's manifest, filtered by split/shard/columns, as (1, H, W) float32 tensors."""

    def __init__(
        self,
        path: str | Path,
        split: str | None = "train",
        label_column: str | None = "label",
        class_names: list[str] | None = None,
        train_subset_only: bool = False,
        shard: int | None = None,
        where: dict[str, list[str]] | None = None,
    ):
        self.path = Path(path)
        rows = read_manifest(self.path)
        if not rows:
            raise ValueError(f"{self.path / 'manifest.csv'}: no rows")
        columns = set(rows[0])
        for col in [label_column, *(where or {})]:
            if col and col not in columns:
                raise ValueError(f"{self.path / 'manifest.csv'}: no column {col!r}; columns are {sorted(columns)}")
        if class_names is None:
            class_names = sorted({r[label_column] for r in rows}) if label_column else ["image"]
        index = {c: i for i, c in enumerate(class_names)}
        keep = []
        for r in rows:
            if split is not None and r.get("split") != split:
                continue
            if train_subset_only and r.get("train_subset") != "1":
                continue
            if shard is not None and str(r.get("shard")) != str(shard):
                continue
            if any(r.get(c) not in set(v) for c, v in (where or {}).items()):
                continue
            if label_column and r[label_column] not in index:
                raise ValueError(f"{self.path / 'manifest.csv'}: item {r['item_id']}: {label_column}={r[label_column]!r} not in class_names {class_names}")
            keep.append(r)
        if not keep:
            raise ValueError(f"{self.path}: no rows with split={split!r}, shard={shard!r}, where={where or {}}")
        self.rows = keep
        pixels = [read_image(self.path / r["file"]).pixels for r in keep]
        shapes = {p.shape for p in pixels}
        if len(shapes) != 1:
            raise ValueError(f"{self.path}: images of different sizes {sorted(shapes)[:4]}; prepare with a fixed size")
        images = torch.from_numpy(np.stack(pixels)[:, None]).float()
        labels = torch.tensor([index[r[label_column]] if label_column else 0 for r in keep], dtype=torch.long)
        h, w = pixels[0].shape
        options = f"split={split};label={label_column};classes={class_names};subset={train_subset_only};shard={shard};where={sorted((where or {}).items())}"
        info = DatasetInfo(
            name=f"prepared:{self.path.name}",
            image_size=(h, w),
            class_names=tuple(class_names),
            bit_depth=16,
            extra={"path": str(self.path), "split": split, "n": len(keep), "shard": shard, "train_subset_only": train_subset_only},
        )
        # the fingerprint covers the selection options and item ids as well as the pixels and labels
        super().__init__(images, labels, info, source=options + "\n" + "\n".join(r["item_id"] for r in keep))


DATASETS.register("prepared", args=PreparedArgs, summary="a folder written by `breastgan prepare` (manifest.csv + images)")(PreparedDataset)
