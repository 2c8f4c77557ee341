"""The one place breastgan talks to torch.distributed.

Train, generate and evaluate receive a :class:`DistContext`; nothing else imports
``torch.distributed``. Launched by ``torchrun`` the context reads RANK / WORLD_SIZE / LOCAL_RANK
from the environment; without torchrun it is a single process and every collective is a no-op.

Failure handling. A collective that fails (a peer died, or stopped answering within
``BREASTGAN_DIST_TIMEOUT`` seconds) raises :class:`DistributedError` naming the lost rank(s). The
backends cannot name them (gloo reports a closed socket, nccl a timeout), so every rank runs a
small heartbeat thread that bumps a per-rank counter in the rendezvous store (the TCP store
torchrun's agent serves at MASTER_ADDR:MASTER_PORT, which outlives the workers); after a failure
the survivor watches the counters for a moment, and a rank whose counter stands still is lost.
This works for gloo and nccl alike, unlike ``torch.distributed.monitored_barrier`` (gloo only,
and only rank 0 learns which rank failed).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

HEARTBEAT_INTERVAL_S = 0.25
# a live rank beats ~8 times in this window; one whose counter does not move in it is lost
LOST_AFTER_S = 2.0


class DistributedError(RuntimeError):
    """A collective failed: another rank died, timed out, or the ranks disagree."""


class _Heartbeat:
    """Daemon thread bumping ``hb/<rank>`` in the rendezvous store every HEARTBEAT_INTERVAL_S."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.port = int(os.environ.get("MASTER_PORT", "0"))
        # keys of an earlier attempt (torchrun --max-restarts) must not count as beats of this one
        self.prefix = f"breastgan/heartbeat/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store(self) -> dist.Store:
        # a client of its own per thread: a TCPStore client is one socket, not meant for sharing
        store = dist.TCPStore(self.host, self.port, is_master=False, timeout=datetime.timedelta(seconds=5),
                              wait_for_workers=False)
        return dist.PrefixStore(self.prefix, store)

    def start(self) -> None:
        if not self.port:
            return
        self._thread = threading.Thread(target=self._run, name=f"breastgan-heartbeat-{self.rank}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            store = self._store()
            while not self._stop.is_set():
                store.add(f"hb/{self.rank}", 1)
                self._stop.wait(HEARTBEAT_INTERVAL_S)
        except Exception:  # the store went away (its host died): diagnosis then reports that instead
            return

    def stop(self) -> None:
        self._stop.set()

    def lost_ranks(self) -> list[int] | str:
        """Ranks whose counter stood still for LOST_AFTER_S; a string says why nobody could be named."""
        if self._thread is None:
            return "no heartbeat store (not launched by torchrun or without MASTER_PORT)"
        try:
            store = self._store()
            before = [store.add(f"hb/{r}", 0) for r in range(self.world_size)]
            time.sleep(LOST_AFTER_S)
            after = [store.add(f"hb/{r}", 0) for r in range(self.world_size)]
        except Exception as exc:
            return (f"the rendezvous store at {self.host}:{self.port} is unreachable ({type(exc).__name__}); the process "
                    "hosting it (torchrun's agent on node 0, or rank 0) or its node is probably lost")
        return [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]


@contextmanager
def _defer_signals() -> Iterator[list[int]]:
    """Hold SIGTERM/SIGINT while a failure is diagnosed and reported.

    When a worker dies, torchrun's agent SIGTERMs the survivors at once; without this the survivor
    would die mid-diagnosis and its log would never say which rank was lost. The agent follows up
    with SIGKILL after its grace period (30 s), so deferring cannot hang anything. Deferred signals
    are replayed to the previous Python handler (the trainer's StopSignal) afterwards.
    """
    got: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
        for signum in got:
            prev = previous.get(signum)
            if callable(prev):
                try:
                    prev(signum, None)
                except KeyboardInterrupt:  # the failure being raised matters more than the interrupt
                    pass


def _is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):  # DistBackendError, DistNetworkError, DistStoreError
        return True
    text = str(exc)
    # DDP's reducer and some gloo paths raise plain RuntimeErrors; recognise them by their wording
    return any(s in text for s in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                                   "Broken pipe", "Timed out waiting", "ProcessGroup"))


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    heartbeat: _Heartbeat | None = field(default=None, repr=False, compare=False)
    _slow_group: Any = field(default=None, repr=False, compare=False)

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

    def all_reduce_sum_(self, tensor: torch.Tensor, what: str = "all_reduce", group: Any = None) -> torch.Tensor:
        if self.distributed:
            self._guard(what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group))
        return tensor

    def group_size(self, group: Any = None) -> int:
        return dist.get_world_size(group) if self.distributed else 1

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

    def reduce_feature_moments(self, total: torch.Tensor, outer: torch.Tensor, count: int,
                               what: str = "feature statistics") -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sum each rank's feature moments (sum of rows, sum of outer products, row count) over all ranks.

        Every rank gets the totals, from which mean and covariance follow exactly as in one process:
        the reduction is a float64 sum, so the only difference from a single process is the order
        of additions (relative error ~1e-16). One flat buffer keeps it to a single collective.
        """
        total64, outer64 = total.detach().to(torch.float64).cpu(), outer.detach().to(torch.float64).cpu()
        if not self.distributed:
            return total64, outer64, int(count)
        d = total64.numel()
        if outer64.shape != (d, d):
            raise ValueError(f"outer-product sum must be ({d}, {d}) for a {d}-dim feature sum, got {tuple(outer64.shape)}")
        # the dimension travels too, so ranks that extracted different features fail loudly here
        shapes = self.all_gather_object(d, f"{what} (feature dimension)")
        if len(set(shapes)) != 1:
            raise DistributedError(f"{what}: ranks extracted features of different dimensions {shapes}; all ranks must use the same extractor")
        # count as float64 is exact below 2**53 rows
        buf = torch.cat([torch.tensor([float(count)], dtype=torch.float64), total64.flatten(), outer64.flatten()]).to(self.device)
        self._guard(what, lambda: dist.all_reduce(buf, op=dist.ReduceOp.SUM))
        buf = buf.cpu()
        return buf[1 : 1 + d].clone(), buf[1 + d :].reshape(d, d).clone(), int(round(float(buf[0])))

    def new_group(self, ranks: list[int], timeout_s: float | None = None) -> Any:
        """A torch.distributed process sub-group (every rank must call this, in the same order)."""
        if not self.distributed:
            return None
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        return dist.new_group(ranks=ranks, backend="gloo" if self.device.type == "cpu" else None, **kwargs)

    def broadcast_object_patiently(self, obj: Any, what: str = "broadcast") -> Any:
        """Broadcast from rank 0 over a group with a long timeout (``BREASTGAN_DIST_SLOW_TIMEOUT``, 24 h).

        For results rank 0 computes alone while the others wait (an in-training FID can take longer
        than the ordinary collective timeout). A lost peer still fails at once: gloo notices the
        closed socket; only a rank that hangs is waited for this long.
        """
        if not self.distributed:
            return obj
        if self._slow_group is None:
            self._slow_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=_slow_timeout_s()))
        box = [obj]
        self._guard(what, lambda: dist.broadcast_object_list(box, src=0, group=self._slow_group))
        return box[0]

    def mean_over_ranks(self, values: dict[str, float], what: str = "logged scalars") -> dict[str, float]:
        """Per-key means over ranks (every rank must log the same keys; a mismatch is an error)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        gathered = self.all_gather_object(keys, f"{what} (names)")
        if any(g != keys for g in gathered):
            raise DistributedError(f"{what}: ranks logged different scalars: {gathered}")
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        self._guard(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM))
        return {k: float(v) / self.world_size for k, v in zip(keys, t.cpu().tolist())}

    def check_same(self, label: str, value: str) -> None:
        """Fail on every rank if ranks disagree on ``value`` (e.g. config or dataset hash)."""
        mine = hashlib.sha256(value.encode()).hexdigest()
        values = self.all_gather_object(mine, f"check {label}")
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise DistributedError(
                f"{label} differs between ranks: rank(s) {bad} disagree with rank 0 "
                f"(sha256 {values[0][:12]} on rank 0, {', '.join(f'{values[r][:12]} on rank {r}' for r in bad)}); "
                f"all ranks must use the same {label}"
            )

    # -- failures -----------------------------------------------------------------------------
    @contextmanager
    def collective_errors(self, what: str) -> Iterator[None]:
        """Turn a collective failure raised inside the block (e.g. by DDP's gradient all-reduce
        during ``backward``) into a :class:`DistributedError` naming the lost rank; any other
        exception passes through unchanged."""
        try:
            yield
        except DistributedError:
            raise
        except Exception as exc:
            if not self.distributed or not _is_collective_failure(exc):
                raise
            raise self._failure(what, exc) from exc

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # gloo/nccl raise RuntimeError or DistBackendError with terse text
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: BaseException) -> DistributedError:
        with _defer_signals():
            lost = self.heartbeat.lost_ranks() if self.heartbeat is not None else "no heartbeat"
            if isinstance(lost, list) and lost:
                who = f"rank {lost[0]} was lost" if len(lost) == 1 else f"ranks {', '.join(map(str, lost))} were lost"
                cause = f"{who} (its process was killed, crashed or hangs; check its log)"
            elif isinstance(lost, list):
                cause = "every rank still answers its heartbeat, so a peer probably raised an error of its own; check the other ranks' logs"
            else:
                cause = f"the lost rank could not be named: {lost}"
            err = DistributedError(
                f"rank {self.rank}: collective '{what}' failed: {cause}. This rank stops instead of waiting "
                f"(timeout {_timeout_s():.0f} s, BREASTGAN_DIST_TIMEOUT). Backend said: {type(exc).__name__}: {str(exc).strip()[:300]}"
            )
            # say it now: torchrun SIGKILLs the survivors after its grace period, possibly before the
            # exception reaches the top level and is printed
            from breastgan.training.logger import get_logger

            get_logger().error(str(err))
            if self.heartbeat is not None:
                self.heartbeat.stop()
        return err


def _timeout_s() -> float:
    return float(os.environ.get("BREASTGAN_DIST_TIMEOUT", "300"))


def _slow_timeout_s() -> float:
    return float(os.environ.get("BREASTGAN_DIST_SLOW_TIMEOUT", str(24 * 3600)))


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Create the context from torchrun's environment (or a single-process one without it).

    ``timeout_s`` (default ``BREASTGAN_DIST_TIMEOUT``, 300 s) bounds every collective: a rank that
    stops answering makes the others fail after at most this long instead of hanging forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s or _timeout_s())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout, device_id=dev if dev.type == "cuda" else None)
    heartbeat = _Heartbeat(rank, world)
    heartbeat.start()
    return DistContext(rank, world, local_rank, dev, backend, heartbeat)


def shutdown(ctx: DistContext) -> None:
    if ctx.heartbeat is not None:
        ctx.heartbeat.stop()
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class StopSignal:
    """Turn SIGTERM/SIGINT into a flag checked between steps, so a run stops with a final checkpoint.

    A repeated SIGTERM is ignored: under torchrun a signal to the process group reaches each worker
    twice (directly, and forwarded by the agent), and schedulers follow SIGTERM with SIGKILL anyway.
    A second SIGINT (Ctrl-C pressed again) abandons the graceful stop.
    """

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
        if self.requested and signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
