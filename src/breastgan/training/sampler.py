"""Which samples each process sees, step by step: deterministic, resumable, world-size aware.

Each epoch is a permutation drawn from ``(seed, epoch)``. Global batch ``b`` of the epoch holds
positions ``[b * B, (b + 1) * B)`` of the permutation (``B`` = per-process batch x world size);
process ``r`` takes its ``r``-th slice. Hence the union of what all processes see in a step does not
depend on the world size, resuming mid-epoch is a matter of starting at batch ``b``, and a run
resumed with another world size keeps the same global data order (only the per-process slices
change). This plays the role of torch's DistributedSampler with per-epoch reseeding, plus exact
mid-epoch resume, which DistributedSampler does not offer.
"""

from __future__ import annotations

import torch


class EpochBatchPlan:
    def __init__(self, num_samples: int, per_rank_batch: int, world_size: int, rank: int, seed: int, shuffle: bool = True):
        self.num_samples, self.per_rank_batch, self.world_size, self.rank = num_samples, per_rank_batch, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.global_batch = per_rank_batch * world_size
        if self.global_batch > num_samples:
            raise ValueError(
                f"effective batch {self.global_batch} (batch_size {per_rank_batch} x {world_size} processes) "
                f"exceeds the dataset size {num_samples}"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch  # incomplete last batch dropped (GAN batches stay equal)

    def global_indices(self, epoch: int, batch: int) -> torch.Tensor:
        order = self._order(epoch)
        return order[batch * self.global_batch : (batch + 1) * self.global_batch]

    def rank_slice(self, t: torch.Tensor) -> torch.Tensor:
        """This process's part of a tensor drawn at the global batch size."""
        return t[self.rank * self.per_rank_batch : (self.rank + 1) * self.per_rank_batch]

    def indices(self, epoch: int, batch: int) -> torch.Tensor:
        return self.rank_slice(self.global_indices(epoch, batch))

    _cache: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.num_samples, generator=g)
            else:
                order = torch.arange(self.num_samples)
            self._cache = (epoch, order)
        return self._cache[1]
