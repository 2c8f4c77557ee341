"""In-training KID and FID, registered in the trainer's :data:`EVAL_CALLBACKS` registry.

Protocol (``breastgan.training.callbacks``): built as ``EVAL_CALLBACKS.build(name, args, real=dataset)``
on rank 0, called every ``every`` steps with ``sample(n, seed) -> (n, 1, H, W) [0, 1]`` and returns
``{metric: value}`` with the headline metric first, so ``best_metric: kid`` selects checkpoints by it.

The real set's features are extracted once (on the first call, from the on-disk cache when the same
dataset went through the same extractor before); each call then costs only the synthetic samples'
extraction. Use the same ``n`` and ``seed`` across a run: KID and especially FID depend on n, and
fixed sampling seeds make successive values differ only by the generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.extractors import FeatureExtractor, build_extractor
from breastgan.evaluation.features import FeatureSet, cached_features, default_cache_dir, extract_features
from breastgan.evaluation.fid import FrechetReference
from breastgan.evaluation.kid import kernel_inception_distance
from breastgan.evaluation.sources import from_dataset, from_tensor
from breastgan.training.callbacks import EVAL_CALLBACKS, SampleFn


class _FeatureCallbackArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(500, ge=10, description="synthetic samples per evaluation (and real images used, at most)")
    seed: int = Field(12345, description="sampling seed; fixed so successive values compare the generator only")
    extractor: Any = Field("inception-fid", description="extractor name or spec dict")
    cache_dir: str | None = Field(None, description="real-feature cache; default $BREASTGAN_CACHE or ~/.cache/breastgan")
    sample_batch: int = Field(64, ge=1, description="images requested from the generator per call of sample()")


class KIDCallbackArgs(_FeatureCallbackArgs):
    subsets: int = Field(100, ge=1)
    subset_size: int = Field(1000, ge=2, description="capped at n")


class _FeatureCallback:
    lower_is_better = True

    def __init__(self, n: int, seed: int, extractor: Any, cache_dir: str | None, sample_batch: int, real: Any):
        self.n, self.seed, self.sample_batch = n, seed, sample_batch
        self.extractor_spec = extractor
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.real_source = from_dataset(real, n, seed) if not hasattr(real, "batches") else real
        self._extractor: FeatureExtractor | None = None
        self._real: FeatureSet | None = None

    def _prepare(self) -> tuple[FeatureExtractor, FeatureSet]:
        if self._extractor is None:
            self._extractor = build_extractor(self.extractor_spec)
        if self._real is None:
            self._real = cached_features(self.real_source, self._extractor, self.cache_dir)
        return self._extractor, self._real

    def _fake_features(self, sample: SampleFn) -> FeatureSet:
        import torch

        ext, _ = self._prepare()
        # sample in batches so a large n does not hold every image at once; seeds are fixed per batch
        batches = [sample(min(self.sample_batch, self.n - s), self.seed + s).detach().float().cpu().clamp(0, 1)
                   for s in range(0, self.n, self.sample_batch)]
        return extract_features(from_tensor(torch.cat(batches), name="generator samples"), ext)


@EVAL_CALLBACKS.register("kid", args=KIDCallbackArgs, summary="Kernel Inception Distance of EMA samples vs the training data (lower is better)")
class KIDCallback(_FeatureCallback):
    def __init__(self, n: int, seed: int, extractor: Any, cache_dir: str | None, sample_batch: int, subsets: int, subset_size: int, real: Any):
        super().__init__(n, seed, extractor, cache_dir, sample_batch, real)
        self.subsets, self.subset_size = subsets, subset_size

    def __call__(self, sample: SampleFn, step: int) -> dict[str, float]:
        fake = self._fake_features(sample)
        _, real = self._prepare()
        if real.features is None or fake.features is None:
            raise RuntimeError("KID callback: feature rows missing")
        r = kernel_inception_distance(real.features, fake.features, subsets=self.subsets, subset_size=self.subset_size, seed=self.seed)
        return {"kid": r.mean, "kid_std": r.std, "kid_subset_size": float(r.subset_size)}


@EVAL_CALLBACKS.register("fid", args=_FeatureCallbackArgs, summary="FID of EMA samples vs the training data (lower is better; biased at small n)")
class FIDCallback(_FeatureCallback):
    _reference: FrechetReference | None = None

    def __call__(self, sample: SampleFn, step: int) -> dict[str, float]:
        fake = self._fake_features(sample)
        _, real = self._prepare()
        if self._reference is None:  # the real Gaussian's Cholesky factor, once per run
            self._reference = FrechetReference(real.mean, real.cov)
        return {"fid": self._reference.distance(fake.mean, fake.cov), "fid_n": float(fake.n)}
