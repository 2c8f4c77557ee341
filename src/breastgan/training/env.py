"""The step environment: everything a recipe's train step may use, and nothing it must manage itself.

Random draws. Every random number of a step comes from one seeded ``torch.Generator`` that is
identical on all ranks, drawn at the *global* batch size; :meth:`StepEnv.local` takes this rank's
slice. So 2 ranks x batch b draw exactly the numbers 1 rank x 2b draws, and a resume restores the
stream exactly (the loop checkpoints the generator's state).

Also here: device placement, autocast, one gradient scaler per optimiser, a finiteness check whose
verdict is agreed across ranks (all ranks roll back together, none waits in a collective the others
skipped), DDP's ``no_sync``, trainable-parameter toggling that leaves frozen parameters frozen, and
process sub-groups.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from breastgan.distributed import DistContext
from breastgan.training.checkpoint import NonFiniteError
from breastgan.training.sampler import EpochBatchPlan


@dataclass
class Batch:
    """This rank's images of a stream batch ((b, C, H, W) float in [0, 1], CPU) and the global batch's labels."""

    images: torch.Tensor
    labels_global: torch.Tensor
    indices: torch.Tensor  # this rank's dataset indices
    indices_global: torch.Tensor


class Stream:
    """A dataset, its epoch plan and the current position in it (owned by the loop, read by recipes)."""

    def __init__(self, name: str, dataset: Any, plan: EpochBatchPlan, sharding: str):
        self.name, self.dataset, self.plan, self.sharding = name, dataset, plan, sharding
        self.epoch = 0
        self.batch_in_epoch = 0
        labels = getattr(dataset, "labels", None)
        self.labels = labels.long() if isinstance(labels, torch.Tensor) else torch.tensor(
            [dataset[i][1] for i in range(len(dataset))], dtype=torch.long)

    def current(self) -> Batch:
        gidx = self.plan.global_indices(self.epoch, self.batch_in_epoch)
        idx = self.plan.rank_slice(gidx)
        if hasattr(self.dataset, "get_batch"):
            images, _ = self.dataset.get_batch(idx)
        else:
            images = torch.stack([self.dataset[int(i)][0] for i in idx])
        return Batch(images, self.labels[gidx], idx, gidx)

    def advance(self) -> None:
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= self.plan.batches_per_epoch and not self.primary:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0  # secondary streams wrap on their own

    primary = False

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}


class StepEnv:
    """Built by the loop; recipes receive it in ``train_step`` (and at construction, for the device and streams)."""

    def __init__(self, ctx: DistContext, seed: int, amp_dtype: torch.dtype | None, channels_last: bool):
        self.ctx, self.device = ctx, ctx.device
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.rng = torch.Generator().manual_seed(seed)
        self.modules: dict[str, nn.Module] = {}
        self.train_modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.streams: dict[str, Stream] = {}
        self._trainable: dict[str, list[nn.Parameter]] = {}
        self._groups: dict[tuple[int, ...], Any] = {}
        self.run_dir: Any = None  # the run directory (set by the loop; recipes never write into it themselves)
        # read-only progress, kept current by the loop
        self.step = 0
        self.iteration = 0

    # -- progress -----------------------------------------------------------------------------------
    @property
    def primary(self) -> Stream:
        return next(iter(self.streams.values()))

    @property
    def global_batch(self) -> int:
        return self.primary.plan.global_batch

    @property
    def epoch(self) -> int:
        return self.primary.epoch

    def where(self) -> str:
        p = self.primary
        return f"step {self.step} (epoch {p.epoch}, batch {p.batch_in_epoch})"

    # -- random draws (global batch, one stream) -----------------------------------------------------
    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws of a *global* shape, on the CPU."""
        return torch.rand(*shape, generator=self.rng)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng)

    def local(self, t: torch.Tensor, stream: str | None = None) -> torch.Tensor:
        """This rank's slice of a tensor drawn at the global batch size, on the device."""
        s = self.streams[stream] if stream else self.primary
        return self.to_device(s.plan.rank_slice(t))

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- data -----------------------------------------------------------------------------------------
    def batch(self, stream: str | None = None) -> Batch:
        """The current batch of a stream (the loop advances every stream once per iteration)."""
        return (self.streams[stream] if stream else self.primary).current()

    # -- modules ---------------------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module:
        """The plain module (no DDP wrapper): for forward passes that take no gradient of its parameters."""
        return self.modules[name]

    def train_module(self, name: str) -> nn.Module:
        """The module as trained: DDP-wrapped in distributed runs when the recipe asked for it."""
        return self.train_modules[name]

    def set_trainable(self, name: str, flag: bool) -> None:
        """Toggle gradients of the parameters that were trainable when built; frozen ones stay frozen."""
        for p in self._trainable[name]:
            p.requires_grad_(flag)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @contextmanager
    def no_sync(self, name: str) -> Iterator[None]:
        """Accumulate gradients locally (DDP skips its all-reduce) inside the block."""
        m = self.train_modules[name]
        with (m.no_sync() if hasattr(m, "no_sync") else nullcontext()):
            yield

    # -- losses and updates ------------------------------------------------------------------------------
    def check_finite(self, loss: torch.Tensor, what: str) -> None:
        """Raise :class:`NonFiniteError` on *every* rank when the loss is NaN/Inf on *any* rank.

        Checked before ``backward``: a rank that skipped backward would otherwise leave the others
        waiting in DDP's gradient all-reduce.
        """
        finite = bool(torch.isfinite(loss.detach()).all())
        bad = 0.0 if finite else 1.0
        if self.ctx.distributed:
            bad = self.ctx.all_reduce_max(bad, f"finiteness check ({what})")
        if bad:
            value = float(loss.detach()) if loss.numel() == 1 else "non-finite"
            shown = value if not finite else "non-finite on another rank"
            raise NonFiniteError(f"{what} is {shown} at {self.where()}")

    def step_optimizer(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad, (scaled) backward, step, scaler update for optimiser ``name``."""
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    # -- process groups ----------------------------------------------------------------------------------
    def mean_over_ranks_(self, tensor: torch.Tensor, ranks: list[int] | None = None) -> torch.Tensor:
        """Average ``tensor`` in place over ``ranks`` (default all) - e.g. recipe state every rank must share."""
        group = self.group(ranks) if ranks is not None else None
        t = tensor.to(self.device)
        self.ctx.all_reduce_sum_(t, "recipe all-reduce", group=group)
        t /= self.ctx.group_size(group)
        tensor.copy_(t.to(tensor.device))
        return tensor

    def group(self, ranks: list[int] | tuple[int, ...]) -> Any:
        """A process sub-group of ``ranks`` (created once, on every rank, as torch.distributed requires)."""
        key = tuple(sorted(ranks))
        if key not in self._groups:
            self._groups[key] = self.ctx.new_group(list(key))
        return self._groups[key]
