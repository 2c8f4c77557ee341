"""The dataset contract every training source satisfies, and the dataset registry.

A training dataset yields ``(image, label)`` with ``image`` a float32 tensor of shape (1, H, W) in
[0, 1] and ``label`` an int64 class index (0 when unlabelled). Each dataset also says what it is
(:class:`DatasetInfo`) and gives a content fingerprint, used to detect ranks or resumed runs that
see different data and to key cached evaluation statistics.

New sources (DICOM-backed prepared datasets, clinical adapters) register here with their own
argument model; the training loop never changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from breastgan.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: tuple[int, int]  # (H, W)
    channels: int = 1
    class_names: tuple[str, ...] = ("image",)
    bit_depth: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@runtime_checkable
class ImageDataset(Protocol):
    info: DatasetInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    def fingerprint(self) -> str:
        """Stable hash of the dataset content and the options that produced it."""
        ...


DATASETS: Registry[Any] = Registry("dataset")


def build_dataset(name: str, args: dict[str, Any] | None = None) -> ImageDataset:
    """Build a registered dataset from its validated arguments."""
    ds = DATASETS.build(name, args)
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"dataset {name!r} does not implement the ImageDataset protocol")
    return ds


def hash_tensor(t: torch.Tensor, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    t = t.detach().contiguous().cpu()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.numpy().tobytes())
    return h


class TensorDataset:
    """An in-memory dataset of (N, 1, H, W) float images in [0, 1] and int labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, source: str = ""):
        if images.ndim != 4 or images.shape[1] != info.channels:
            raise ValueError(f"{info.name}: images must be (N, {info.channels}, H, W), got {tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{info.name}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images.float().contiguous()
        self.labels = labels.long()
        self.info = info
        self._source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectorised batch access (the training loop uses it to skip per-item Python overhead)."""
        return self.images[indices], self.labels[indices]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self._source.encode())
        hash_tensor(self.images, h)
        hash_tensor(self.labels, h)
        return h.hexdigest()
