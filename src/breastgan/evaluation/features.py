"""Streaming feature extraction, running FID statistics, and the on-disk cache of real-set features.

FID needs only the mean and covariance: :class:`RunningStats` accumulates them in float64 from
batches, so its memory is O(D^2) whatever the number of images. KID, precision/recall and the
embeddings need the features themselves; they are kept only up to ``keep`` rows (the caller states
the bound: n x D x 4 bytes, 16 MB for 2,000 Inception features).

The cache key is the source's content fingerprint plus the extractor's description (network
weights hash and input policy), so changing any of them recomputes; entries are ``.npz`` files read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastgan.evaluation.extractors import FeatureExtractor
from breastgan.evaluation.sources import ImageSource
from breastgan.utils.atomic import atomic_path

CACHE_VERSION = 1


class RunningStats:
    """Mean and (unbiased, n - 1) covariance of feature rows, accumulated in float64 batch by batch."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, feats: torch.Tensor) -> None:
        f = feats.to(torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self, ctx) -> "RunningStats":
        """Sum the statistics of all processes (each extracted its own share of the images); every
        rank then holds the totals, equal to one process's up to float64 summation order.
        ``ctx``: a :class:`breastgan.distributed.DistContext` (a no-op in a single process)."""
        self.sum, self.outer, self.n = ctx.reduce_feature_moments(self.sum, self.outer, self.n)
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        mu = self.mean
        # sum (x - mu)(x - mu)^T = sum x x^T - n mu mu^T; float64 keeps the cancellation harmless at Inception scales
        return (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)


@dataclass
class FeatureSet:
    """Features of one image set: running statistics always, the rows themselves when kept."""

    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64
    n: int
    features: torch.Tensor | None  # (min(n, keep), D) float32, or None
    extractor: dict[str, Any]
    source: dict[str, Any]
    seconds: float = 0.0
    from_cache: bool = False


def extract_features(source: ImageSource, extractor: FeatureExtractor, *, keep: int | None = None, read_batch: int = 256) -> FeatureSet:
    """Run ``extractor`` over ``source`` in batches; keep at most ``keep`` feature rows (None: all)."""
    t0 = time.perf_counter()
    stats: RunningStats | None = None
    kept: list[torch.Tensor] = []
    n_kept = 0
    limit = source.n if keep is None else keep
    for batch in source.batches(read_batch):
        f = extractor(batch)
        if stats is None:
            stats = RunningStats(f.shape[1])
        stats.update(f)
        if n_kept < limit:
            kept.append(f[: limit - n_kept])
            n_kept += kept[-1].shape[0]
    if stats is None or stats.n < 2:
        raise ValueError(f"{source.location}: need at least 2 images for feature statistics, got {source.n}")
    return FeatureSet(stats.mean, stats.cov, stats.n, torch.cat(kept) if kept else None, extractor.describe(),
                      source.describe(), time.perf_counter() - t0)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BREASTGAN_CACHE", Path.home() / ".cache" / "breastgan")) / "eval-features"


def cache_key(source: ImageSource, extractor: FeatureExtractor) -> str:
    desc = json.dumps({"v": CACHE_VERSION, "source": source.fingerprint(), "extractor": extractor.describe()}, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:32]


def cached_features(source: ImageSource, extractor: FeatureExtractor, cache_dir: str | Path | None, *, keep: int | None = None) -> FeatureSet:
    """Features of a (real) set, from ``cache_dir`` when the same images went through the same extractor before."""
    if cache_dir is None:
        return extract_features(source, extractor, keep=keep)
    path = Path(cache_dir) / f"{cache_key(source, extractor)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            feats = torch.from_numpy(z["features"]) if "features" in z.files else None
            # a cache entry written with fewer kept rows than needed now is not good enough
            if keep is None or (feats is not None and feats.shape[0] >= min(keep, meta["n"])):
                if feats is not None and keep is not None:
                    feats = feats[:keep]
                return FeatureSet(torch.from_numpy(z["mean"]), torch.from_numpy(z["cov"]), meta["n"], feats,
                                  meta["extractor"], meta["source"], 0.0, from_cache=True)
    fs = extract_features(source, extractor, keep=keep)
    meta = {"n": fs.n, "extractor": fs.extractor, "source": _jsonable(fs.source), "version": CACHE_VERSION}
    arrays = {"mean": fs.mean.numpy(), "cov": fs.cov.numpy(), "meta": np.array(json.dumps(meta))}
    if fs.features is not None:
        arrays["features"] = fs.features.numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return fs


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, tuple, list)):
        return [_jsonable(v) for v in (sorted(obj) if isinstance(obj, set) else obj)]
    return obj
