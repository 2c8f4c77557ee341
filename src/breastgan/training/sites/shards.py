"""Split one dataset into dm-GAN's N site shards, and the shards' weights pi_j (Eq. 1-2 of the seed).

The seed shards mini-MIAS by breast size. :class:`ShardBy` chooses exactly one rule:

- ``column``: a manifest column of a prepared dataset (``PreparedDataset.rows``). Numeric columns
  are cut into equal-count shards by value, ties broken by item id
  (:func:`breastgan.data.splits.assign_shards`); other columns give one shard per distinct value,
  wrapped modulo n. The default is ``column: breast_area`` (written by ``breastgan prepare``); for a
  dataset without a manifest (the built-in phantom) ``column: breast_area`` falls back to
  ``computed: breast_area``, whether given or defaulted (a saved config reloads to the same shards).
- ``manifest_shard``: the ``shard`` column ``breastgan prepare --shards`` wrote.
- ``file``: a CSV with columns ``item_id,shard``; every item exactly once, shards in [0, n).
  Items of a dataset without a manifest are named by their index (``0``, ``1``, ...).
- ``computed: breast_area``: the number of pixels brighter than ``area_threshold`` (intensity in
  [0, 1]; default 0.05: mammogram background is near 0 and fat is >= 0.2 on the phantom and on
  CLAHE-processed mini-MIAS), then cut like a numeric column.

Every shard must be non-empty: an empty one is an error naming it and suggesting a smaller n.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from breastgan.data.splits import assign_shards

#: pixels brighter than this (image intensity in [0, 1]) count as breast in the computed area
DEFAULT_AREA_THRESHOLD = 0.05


class ShardBy(BaseModel):
    """How to cut a dataset into shards: exactly one of column, manifest_shard, file, computed (default: column breast_area)."""

    model_config = ConfigDict(extra="forbid")
    column: str | None = Field(None, description="manifest column (numeric: equal-count shards by value; default breast_area)")
    manifest_shard: Literal[True] | None = Field(None, description="use the manifest's 'shard' column (breastgan prepare --shards)")
    file: Path | None = Field(None, description="CSV with columns item_id,shard")
    computed: Literal["breast_area"] | None = Field(None, description="computed from the pixels (datasets without a manifest)")
    area_threshold: float = Field(DEFAULT_AREA_THRESHOLD, ge=0, lt=1, description="computed breast_area: intensity above which a pixel is breast")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ShardBy":
        chosen = [k for k in ("column", "manifest_shard", "file", "computed") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"shard by exactly one of column, manifest_shard, file, computed; got {chosen}")
        if not chosen:
            self.column = "breast_area"
        return self


@dataclass
class Shards:
    indices: list[list[int]]  # dataset indices of each shard, ascending
    pi: list[float]  # shard fractions, sum 1
    by: str  # how the shards were made, for logs and run records

    @property
    def sizes(self) -> list[int]:
        return [len(ix) for ix in self.indices]


def shard_weights(sizes: Sequence[int]) -> list[float]:
    """pi_j = n_j / sum(n): the shard fractions weighting the site losses (Eq. 1-2)."""
    if not sizes or any(s < 0 for s in sizes) or sum(sizes) <= 0:
        raise ValueError(f"shard sizes must be non-negative with a positive total, got {list(sizes)}")
    total = sum(sizes)
    return [s / total for s in sizes]


def _rows(dataset: Any) -> list[dict[str, str]] | None:
    rows = getattr(dataset, "rows", None)
    return list(rows) if rows else None


def _item_ids(dataset: Any, rows: list[dict[str, str]] | None) -> list[str]:
    return [str(r["item_id"]) for r in rows] if rows else [str(i) for i in range(len(dataset))]


def _images(dataset: Any) -> torch.Tensor:
    images = getattr(dataset, "images", None)
    return images if isinstance(images, torch.Tensor) else torch.stack([dataset[i][0] for i in range(len(dataset))])


def computed_breast_area(dataset: Any, threshold: float = DEFAULT_AREA_THRESHOLD) -> list[int]:
    """Per image, the number of pixels brighter than ``threshold`` (intensities in [0, 1])."""
    images = _images(dataset)
    return (images.flatten(1) > threshold).sum(1).tolist()


def _by_values(values: list[object], n: int) -> list[int]:
    keyed = {f"{i:09d}": v for i, v in enumerate(values)}  # zero-padded: ties broken by dataset order
    out = assign_shards(keyed, n)
    return [out[k] for k in keyed]


def _by_column(dataset: Any, rows: list[dict[str, str]] | None, by: ShardBy, n: int) -> tuple[list[int], str]:
    column = by.column or "breast_area"
    if rows is None:
        if column == "breast_area":  # also when written out: a saved config round-trips to the same shards
            return _by_values(computed_breast_area(dataset, by.area_threshold), n), \
                f"computed breast_area (pixels > {by.area_threshold}; the dataset has no manifest)"
        raise ValueError(f"shard by column {column!r}: the dataset has no manifest rows (use a prepared dataset, "
                         "or shard by computed: breast_area or a file)")
    if column not in rows[0]:
        raise ValueError(f"shard by column {column!r}: no such manifest column; columns are {sorted(rows[0])}")
    ids = [r["item_id"] for r in rows]
    out = assign_shards({i: r[column] for i, r in zip(ids, rows)}, n)  # ties in value broken by item id
    return [out[i] for i in ids], f"manifest column {column}"


def _parse_shard(text: object, n: int, where: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{where}: shard {text!r} is not an integer; expected 0..{n - 1}") from None
    if not 0 <= value < n:
        raise ValueError(f"{where}: shard {value} out of range; expected 0..{n - 1} for n = {n} shards")
    return value


def _by_manifest_shard(rows: list[dict[str, str]] | None, n: int) -> tuple[list[int], str]:
    if rows is None or "shard" not in rows[0]:
        raise ValueError("shard by manifest_shard: the dataset has no manifest 'shard' column "
                         "(prepare it with split.shards, or shard by column or file)")
    return [_parse_shard(r["shard"], n, f"manifest item {r['item_id']}") for r in rows], "manifest shard column"


def _by_file(dataset: Any, rows: list[dict[str, str]] | None, path: Path, n: int) -> tuple[list[int], str]:
    ids = _item_ids(dataset, rows)
    position = {item: i for i, item in enumerate(ids)}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "item_id" not in header or "shard" not in header:
                raise ValueError(f"{path}: header must have columns item_id,shard; got {header}")
            assigned: dict[str, tuple[int, int]] = {}  # item -> (shard, line)
            for line, row in enumerate(reader, start=2):  # line 1 is the header
                item = (row.get("item_id") or "").strip()
                where = f"{path}: row {line}"
                if item not in position:
                    raise ValueError(f"{where}: unknown item_id {item!r}; expected an item of the dataset "
                                     f"(e.g. {', '.join(repr(i) for i in ids[:3])})")
                if item in assigned:
                    raise ValueError(f"{where}: item_id {item!r} appears twice (first at row {assigned[item][1]}); "
                                     "expected each item exactly once")
                assigned[item] = (_parse_shard(row.get("shard"), n, f"{where} (item {item!r})"), line)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the shard file ({e.strerror or e})") from None
    missing = [i for i in ids if i not in assigned]
    if missing:
        raise ValueError(f"{path}: {len(missing)} item(s) of the dataset have no row, e.g. item_id "
                         f"{', '.join(repr(i) for i in missing[:5])}; expected every item exactly once")
    return [assigned[i][0] for i in ids], f"file {path}"


def make_shards(dataset: Any, n: int, by: ShardBy | None = None) -> Shards:
    """Cut ``dataset`` (a breastgan dataset; ``.rows`` when it has a manifest) into ``n`` non-empty shards."""
    if n < 1:
        raise ValueError(f"make_shards: n must be >= 1 shards, got {n}")
    by = by or ShardBy()
    rows = _rows(dataset)
    if rows is not None and len(rows) != len(dataset):
        raise ValueError(f"make_shards: the dataset has {len(dataset)} items but {len(rows)} manifest rows")
    if by.file is not None:
        shard_of, how = _by_file(dataset, rows, by.file, n)
    elif by.manifest_shard:
        shard_of, how = _by_manifest_shard(rows, n)
    elif by.computed is not None:
        shard_of, how = _by_values(computed_breast_area(dataset, by.area_threshold), n), f"computed breast_area (pixels > {by.area_threshold})"
    else:
        shard_of, how = _by_column(dataset, rows, by, n)
    indices: list[list[int]] = [[] for _ in range(n)]
    for i, s in enumerate(shard_of):
        indices[s].append(i)
    empty = [j for j, ix in enumerate(indices) if not ix]
    if empty:
        filled = n - len(empty)
        raise ValueError(f"shard {empty[0]} of {n} is empty (by {how}; {len(shard_of)} items, {filled} non-empty shards"
                         f"{', shards ' + str(empty) + ' empty' if len(empty) > 1 else ''}); use a smaller n (at most {filled})")
    return Shards(indices=indices, pi=shard_weights([len(ix) for ix in indices]), by=how)
