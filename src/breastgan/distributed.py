"""The one place breastgan talks to torch.distributed.

Train, generate and evaluate receive a :class:`DistContext`; nothing else imports
``torch.distributed``. Launched by ``torchrun`` the context reads RANK / WORLD_SIZE / LOCAL_RANK
from the environment; without torchrun it is a single process and every collective is a no-op.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A collective failed: another rank died, timed out, or the ranks disagree."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- collectives (no-ops in a single process) -------------------------------------------
    def barrier(self, what: str = "barrier") -> None:
        if self.distributed:
            self._guard(what, lambda: dist.barrier())

    def all_reduce_max(self, value: float, what: str = "all_reduce") -> float:
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], device=self.device)
        self._guard(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
        return float(t.item())

    def all_reduce_sum_(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        if self.distributed:
            self._guard(what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def all_gather_object(self, obj: Any, what: str = "all_gather") -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._guard(what, lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast_object(self, obj: Any, src: int = 0, what: str = "broadcast") -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        self._guard(what, lambda: dist.broadcast_object_list(box, src=src))
        return box[0]

    def check_same(self, label: str, value: str) -> None:
        """Fail on every rank if ranks disagree on ``value`` (e.g. config or dataset hash)."""
        values = self.all_gather_object(hashlib.sha256(value.encode()).hexdigest(), f"check {label}")
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise DistributedError(f"{label} differs between ranks: rank(s) {bad} disagree with rank 0; all ranks must use the same {label}")

    def _guard(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # gloo/nccl raise RuntimeError or DistBackendError with terse text
            raise DistributedError(
                f"rank {self.rank}: collective '{what}' failed ({type(exc).__name__}: {exc}). "
                "Another rank has probably died or been killed; check its log. "
                "This rank stops instead of waiting forever."
            ) from exc


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Create the context from torchrun's environment (or a single-process one without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s or float(os.environ.get("BREASTGAN_DIST_TIMEOUT", "300")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout, device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class StopSignal:
    """Turn SIGTERM/SIGINT into a flag checked between steps, so a run stops with a final checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: leave default handling
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up on the graceful path
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
