"""Centres, patient-level subsets and the training sets of the utility experiment.

A :class:`Pool` is a set of labelled images with the patient and split of each image. Centres are
pools loaded from prepared datasets (or from the built-in phantom) and optionally cut into
patient-level parts of one dataset, so several "centres" can come from one public dataset without
a patient in two of them. Every image, real or synthetic, enters a training or evaluation set only
through :func:`to_input` (one value-range check, one area resampling), so the two kinds cannot be
preprocessed differently (methods.md section 4, pitfall 4).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from breastgan.data.splits import SplitItem, assign_splits, reduced_training_subset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    """A fresh patient-level, label-stratified split of a centre."""

    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.70, "val": 0.15, "test": 0.15})
    seed: int = 0


class PatientPart(_Strict):
    """Keep one part of the dataset's patients: ``parts`` names the parts and their shares (label-stratified by patient)."""

    parts: dict[str, float]
    take: str
    seed: int = 0

    @field_validator("take")
    @classmethod
    def _take(cls, v: str, info) -> str:
        parts = info.data.get("parts") or {}
        if v not in parts:
            raise ValueError(f"take={v!r} is not one of the parts {sorted(parts)}")
        return v


class PreparedCentre(_Strict):
    dataset: Literal["prepared"]
    path: Path
    label_column: str = "label"
    where: dict[str, list[str]] = Field(default_factory=dict, description="manifest column -> accepted values")
    patients: PatientPart | None = None
    split: Literal["manifest"] | SplitSpec = Field("manifest", description="'manifest': the split written by prepare (patient-level)")


class PhantomCentre(_Strict):
    dataset: Literal["phantom"]
    args: dict = Field(default_factory=dict, description="options of the phantom dataset (n, size, seed, ...)")
    images_per_patient: int = Field(2, ge=1, description="consecutive phantom patches are grouped into simulated patients")
    patients: PatientPart | None = None
    split: SplitSpec = Field(default_factory=SplitSpec)


CentreSpec = Annotated[Union[PreparedCentre, PhantomCentre], Field(discriminator="dataset")]


@dataclass
class Pool:
    """Labelled images with per-image patient, split, id and source; images (N, 1, H, W) float32 in [0, 1]."""

    images: torch.Tensor
    labels: torch.Tensor
    patients: list[str]
    splits: list[str]
    items: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index) -> "Pool":
        idx = [int(i) for i in index]
        return Pool(self.images[idx], self.labels[idx], [self.patients[i] for i in idx], [self.splits[i] for i in idx],
                    [self.items[i] for i in idx], self.source, list(self.notes))

    def where_split(self, name: str) -> "Pool":
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def counts(self, classes: list[str]) -> dict[str, int]:
        c = Counter(int(v) for v in self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(classes)}


def check_range(images: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Refuse anything that is not float images in [0, 1] of shape (N, 1, H, W)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{what}: expected (N, 1, H, W) grey images, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected float images in [0, 1], got dtype {images.dtype}")
    if images.numel() and not torch.isfinite(images).all():
        raise ValueError(f"{what}: images hold NaN/Inf")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -atol or hi > 1 + atol:
            raise ValueError(f"{what}: values span [{lo:.4g}, {hi:.4g}], expected [0, 1] (a generator or dataset on another scale, e.g. [-1, 1] or 0..255?)")


def to_input(images: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """The single preprocessing path for real and synthetic images: range check, area resampling to size x size."""
    check_range(images, what)
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"{what}: images are {h}x{w}; the utility experiment needs square images (prepare them with a square size)")
    x = images.float().clamp(0.0, 1.0)
    if h != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.contiguous()


def patient_parts(items: list[str], patients: list[str], labels: list[str], groups: list[str | None], spec: PatientPart) -> list[bool]:
    """Per image: does its patient fall in ``spec.take``? Patients (and near-duplicate groups) never straddle parts."""
    split_items = [SplitItem(i, p, lab, g or None) for i, p, lab, g in zip(items, patients, labels, groups)]
    part = assign_splits(split_items, spec.parts, spec.seed)
    return [part[i] == spec.take for i in items]


def _load_prepared(spec: PreparedCentre, classes: list[str], name: str) -> Pool:
    from breastgan.data.prepared import PreparedDataset

    ds = PreparedDataset(spec.path, split=None, label_column=spec.label_column, where=spec.where or None)
    notes = []
    raw = [r[spec.label_column] for r in ds.rows]
    dropped = Counter(v for v in raw if v not in classes)
    if dropped:
        notes.append(f"centre {name}: dropped images of other classes {dict(dropped)}")
    keep = [i for i, v in enumerate(raw) if v in classes]
    if not keep:
        raise ValueError(f"centre {name}: {spec.path} has no images of classes {classes} (labels found: {sorted(set(raw))})")
    rows = [ds.rows[i] for i in keep]
    for col in ("patient_id", "split"):
        if col not in rows[0]:
            raise ValueError(f"centre {name}: {spec.path}/manifest.csv has no {col!r} column")
    pool = Pool(
        images=ds.images[keep],
        labels=torch.tensor([classes.index(r[spec.label_column]) for r in rows], dtype=torch.long),
        patients=[r["patient_id"] for r in rows],
        splits=[r["split"] for r in rows],
        items=[r["item_id"] for r in rows],
        source=name,
        notes=notes,
    )
    groups = [r.get("group") or None for r in rows]
    return _finish(pool, spec.patients, None if spec.split == "manifest" else spec.split, groups, classes, name)


def _load_phantom(spec: PhantomCentre, classes: list[str], name: str) -> Pool:
    from breastgan.data.phantom import PhantomDataset

    ds = PhantomDataset(**spec.args)
    names = list(ds.info.class_names)
    missing = [c for c in classes if c not in names]
    if missing:
        raise ValueError(f"centre {name}: the phantom has classes {names}, not {missing}")
    keep = [i for i in range(len(ds)) if names[int(ds.labels[i])] in classes]
    seed = ds.args.seed
    pool = Pool(
        images=ds.images[keep],
        labels=torch.tensor([classes.index(names[int(ds.labels[i])]) for i in keep], dtype=torch.long),
        patients=[f"phantom{seed}_p{i // spec.images_per_patient}" for i in keep],
        splits=[""] * len(keep),
        items=[f"phantom{seed}_{i}" for i in keep],
        source=name,
    )
    return _finish(pool, spec.patients, spec.split, [None] * len(keep), classes, name)


def _finish(pool: Pool, part: PatientPart | None, split: SplitSpec | None, groups: list[str | None], classes: list[str], name: str) -> Pool:
    labels = [classes[int(v)] for v in pool.labels]
    if part is not None:
        inside = patient_parts(pool.items, pool.patients, labels, groups, part)
        idx = [i for i, ok in enumerate(inside) if ok]
        if not idx:
            raise ValueError(f"centre {name}: part {part.take!r} of the patients is empty")
        groups = [groups[i] for i in idx]
        labels = [labels[i] for i in idx]
        pool = pool.subset(idx)
    if split is not None:
        items = [SplitItem(i, p, lab, g) for i, p, lab, g in zip(pool.items, pool.patients, labels, groups)]
        assigned = assign_splits(items, split.fractions, split.seed)
        pool.splits = [assigned[i] for i in pool.items]
    check_range(pool.images, f"centre {name}")
    return pool


def load_centre(spec: PreparedCentre | PhantomCentre, classes: list[str], name: str) -> Pool:
    if isinstance(spec, PreparedCentre):
        return _load_prepared(spec, classes, name)
    return _load_phantom(spec, classes, name)


def training_fraction(pool: Pool, fraction: float, seed: int, classes: list[str]) -> Pool:
    """The ``fraction`` of a centre's training patients (label-stratified; all images of a kept patient stay)."""
    train = pool.where_split("train")
    if fraction >= 1.0:
        return train
    items = [SplitItem(i, p, classes[int(v)]) for i, p, v in zip(train.items, train.patients, train.labels)]
    keep = reduced_training_subset(items, {i: "train" for i in train.items}, fraction, seed)
    return train.subset([k for k, i in enumerate(train.items) if i in keep])


@dataclass
class TrainingSet:
    """The images a classifier trains on, each tagged with its source (for the realised-mix log, never for preprocessing)."""

    images: torch.Tensor  # (N, 1, S, S) in [0, 1], already through to_input
    labels: torch.Tensor
    sources: list[str]
    items: list[str]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if not (len(self.labels) == len(self.sources) == len(self.items) == n):
            raise ValueError(f"training set: {n} images, {len(self.labels)} labels, {len(self.sources)} sources, {len(self.items)} ids")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]

    def source_counts(self) -> dict[str, int]:
        return dict(Counter(self.sources))

    @staticmethod
    def concat(parts: list["TrainingSet"]) -> "TrainingSet":
        return TrainingSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                           [s for p in parts for s in p.sources], [i for p in parts for i in p.items])


def pool_to_set(pool: Pool, size: int, source: str | None = None) -> TrainingSet:
    return TrainingSet(to_input(pool.images, size, f"real images of {pool.source}"), pool.labels.clone(), [source or pool.source] * len(pool), list(pool.items))


def synthetic_to_set(images: torch.Tensor, label: int, size: int, source: str) -> TrainingSet:
    x = to_input(images, size, f"synthetic images of {source}")
    n = x.shape[0]
    return TrainingSet(x, torch.full((n,), label, dtype=torch.long), [source] * n, [f"{source}#{k}" for k in range(n)])


class EpochSampler:
    """Indices for one epoch over a whole training set (real + added images together).

    'shuffle': a permutation of all N items; 'class_balanced': N draws with replacement, weight
    1 / class count per item. The weight vector is built from the full set and its length is checked
    against the set, so added images cannot be left out of the draw (methods.md section 4, pitfall 2).
    """

    def __init__(self, labels: torch.Tensor, mode: Literal["shuffle", "class_balanced"] = "shuffle"):
        self.n = int(labels.shape[0])
        self.mode = mode
        if mode == "class_balanced":
            counts = torch.bincount(labels)
            self.weights = (1.0 / counts.double().clamp_min(1))[labels]
        elif mode == "shuffle":
            self.weights = None
        else:
            raise ValueError(f"unknown sampler {mode!r}; use 'shuffle' or 'class_balanced'")
        if self.weights is not None and self.weights.shape[0] != self.n:
            raise ValueError(f"sampler weights cover {self.weights.shape[0]} items but the training set has {self.n}")

    def epoch(self, generator: torch.Generator) -> torch.Tensor:
        if self.weights is None:
            return torch.randperm(self.n, generator=generator)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=generator)


def drawn_by_source(indices: torch.Tensor, sources: list[str]) -> dict[str, int]:
    return dict(Counter(sources[int(i)] for i in indices))


def balanced_order(pool: Pool, seed: int) -> dict[int, list[int]]:
    """Per class, the pool's indices in one seeded order: every arm takes prefixes, so the 'none' arm is inside every other arm."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[int]] = {}
    for c in sorted({int(v) for v in pool.labels}):
        idx = [i for i, v in enumerate(pool.labels) if int(v) == c]
        out[c] = [idx[k] for k in rng.permutation(len(idx))]
    return out
