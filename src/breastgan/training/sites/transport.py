"""The wire between dm-GAN's coordinator and one site: a 2-rank gloo process group, typed messages,
an allowlist of message kinds, a byte ledger and a provenance guard.

Each (coordinator, site j, incarnation k) pair gets its own ``ProcessGroupGloo`` built over
``PrefixStore(f"site{j}/inc{k}", store)`` on the coordinator's ``TCPStore``: a site that dies
breaks only its own pair group, and a restarted site (incarnation k + 1) builds a fresh one while
the others keep training. A message is a fixed-length int64 header (kind, step, dtype, shape)
followed by one payload tensor, both moved with the pair group's ``send``/``recv``.

What may cross is decided here, not by the callers: the coordinator may send only
``generated_images`` and ``control``; a site only ``grad_generated``, ``scalars`` and ``hello``.
A site's channel also runs a :class:`ProvenanceGuard` on every outgoing payload: it refuses a
tensor that shares storage with, or whose bytes (whole or any sample along dim 0) equal, a real
image the site has read. Every message is recorded in a JSON-lines :class:`ByteLedger` on both
sides (direction, kind, step, dtype, shape, bytes, sha256 of the payload).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable

import torch
import torch.distributed as dist
from pydantic import AfterValidator

from breastgan.distributed import DistributedError

COORDINATOR, SITE = "coordinator", "site"

#: message kinds each side may send; everything else is refused before a byte leaves the process
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    COORDINATOR: frozenset({"generated_images", "control"}),
    SITE: frozenset({"grad_generated", "scalars", "hello"}),
}
KIND_CODES = {"generated_images": 1, "control": 2, "grad_generated": 3, "scalars": 4, "hello": 5}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.int64: 3, torch.float16: 4, torch.bfloat16: 5}
DTYPES = {v: k for k, v in DTYPE_CODES.items()}

#: control operations (payload of a ``control`` message: int64 [op, arg])
CONTROL_STOP, CONTROL_CHECKPOINT = 1, 2

MAGIC = 0x6D_47_41_4E  # "mGAN"
MAX_DIMS = 6
HEADER_LEN = 5 + MAX_DIMS  # magic, kind, step, dtype, ndim, shape...
#: a header that announces more than this is refused (a corrupt or hostile peer must not make us allocate terabytes)
MAX_PAYLOAD_ELEMENTS = 1 << 31


class SiteError(DistributedError):
    """A site died, timed out, or sent something it must not; the message names the site."""


class TransportViolation(SiteError):
    """A message kind outside the allowlist, or a malformed header."""


class ProvenanceError(TransportViolation):
    """An outgoing payload is (or shares memory with) a real image the site read."""


def sha256_tensor(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _sample_hashes(t: torch.Tensor) -> list[str]:
    return [sha256_tensor(t[i]) for i in range(t.shape[0])] if t.ndim >= 2 else []


class ProvenanceGuard:
    """Remembers every real tensor a site read (storage address and content hashes) and refuses to send them.

    ``register_real`` is called by the site on each real batch (and on the raw images it loaded);
    ``check`` by the site's channel on each outgoing payload. The guard catches the real pixels
    themselves, a view of them and any single real sample copied into a batch, in any of the
    registered dtypes/ranges; it cannot catch an arbitrary transform of them (a gradient can still
    carry information about the real images; docs/sites.md says so).
    """

    def __init__(self) -> None:
        self._hashes: set[str] = set()
        # real tensors whose storage an outgoing payload must not share; held (not just their addresses) so that
        # a freed batch's memory, reused by a later gradient, is never mistaken for real pixels
        self._held: list[torch.Tensor] = []
        self._pinned: list[torch.Tensor] = []  # the site's whole image tensor: held for the site's lifetime
        self.batches_registered = 0
        self.payloads_checked = 0

    def register_real(self, t: torch.Tensor, *, pin: bool = False, hash_samples: bool = True) -> list[str]:
        """Record a real tensor (a batch (b, C, H, W) or one image); returns its per-sample hashes.

        ``pin``: hold it for the guard's lifetime (the loaded dataset); otherwise the 4 latest batches are held.
        """
        t = t.detach()
        if pin:
            self._pinned.append(t)
        else:
            self._held = [*self._held[-3:], t]
        whole = sha256_tensor(t)
        samples = _sample_hashes(t) if t.ndim == 4 and hash_samples else [whole]
        self._hashes.add(whole)
        self._hashes.update(samples)
        self.batches_registered += 1
        return samples

    def check(self, t: torch.Tensor, kind: str) -> None:
        self.payloads_checked += 1
        t = t.detach()
        if t.device.type == "cpu" and t.numel():
            s = t.untyped_storage()
            lo, hi = s.data_ptr(), s.data_ptr() + s.nbytes()
            for real in [*self._pinned, *self._held]:
                rs = real.untyped_storage()
                if real.device.type == "cpu" and lo < rs.data_ptr() + rs.nbytes() and rs.data_ptr() < hi:
                    raise ProvenanceError(f"refusing to send {kind!r}: the payload shares memory with a real batch this site read")
        candidates = [sha256_tensor(t)] + (_sample_hashes(t) if t.ndim == 4 else [])
        if any(h in self._hashes for h in candidates):
            raise ProvenanceError(f"refusing to send {kind!r}: the payload (or one of its samples) equals a real image this site read")

    def summary(self) -> dict[str, int]:
        return {"real_hashes": len(self._hashes), "real_batches_registered": self.batches_registered,
                "payloads_checked": self.payloads_checked}


class ByteLedger:
    """JSON lines, one per message, plus running totals per site (thread-safe: the coordinator has one thread per site)."""

    def __init__(self, path: Path | None, side: str):
        self.path, self.side = (Path(path) if path is not None else None), side
        self._lock = threading.Lock()
        self._totals: dict[int, dict[str, Any]] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, *, site: int, direction: str, kind: str, step: int, tensor: torch.Tensor, nbytes: int,
               incarnation: int | None = None) -> None:
        entry = {"time": round(time.time(), 3), "side": self.side, "site": site, "incarnation": incarnation,
                 "direction": direction, "kind": kind, "step": step, "dtype": str(tensor.dtype).removeprefix("torch."),
                 "shape": list(tensor.shape), "bytes": nbytes, "sha256": sha256_tensor(tensor)}
        with self._lock:
            tot = self._totals.setdefault(site, {"bytes_sent": 0, "bytes_received": 0, "messages_sent": 0,
                                                 "messages_received": 0, "kinds_sent": {}, "kinds_received": {}})
            verb = "sent" if direction == "sent" else "received"
            tot[f"bytes_{verb}"] += nbytes
            tot[f"messages_{verb}"] += 1
            tot[f"kinds_{verb}"][kind] = tot[f"kinds_{verb}"].get(kind, 0) + 1
            if self.path is not None:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")

    def totals(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._totals)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class Message:
    kind: str
    step: int
    tensor: torch.Tensor


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r}: expected host:port (e.g. 10.0.0.5:29600)")
    return host.strip("[]"), int(port)


def _checked_address(address: str) -> str:
    parse_address(address)
    return address


#: a host:port option, checked when the options are validated (coordinator and site configs)
Address = Annotated[str, AfterValidator(_checked_address)]


def pair_prefix(site: int, incarnation: int) -> str:
    return f"site{site}/inc{incarnation}"


class PairChannel:
    """One side of a (coordinator, site, incarnation) pair group: typed, allowlisted, ledgered send/recv.

    Rank 0 is the coordinator, rank 1 the site. Gloo errors (peer closed the connection, timeout)
    become :class:`SiteError` naming the site and its incarnation.
    """

    def __init__(self, store: dist.Store, *, site: int, incarnation: int, role: str, timeout_s: float,
                 ledger: ByteLedger, guard: ProvenanceGuard | None = None, peer_name: str = ""):
        if role not in ALLOWED_KINDS:
            raise ValueError(f"role {role!r}: expected {COORDINATOR!r} or {SITE!r}")
        self.site, self.incarnation, self.role = site, incarnation, role
        self.peer_role = SITE if role == COORDINATOR else COORDINATOR
        self.rank, self.peer = (0, 1) if role == COORDINATOR else (1, 0)
        self.ledger, self.guard = ledger, guard
        self.peer_name = peer_name or (f"site {site} (incarnation {incarnation})" if role == COORDINATOR else "the coordinator")
        try:
            self.pg = dist.ProcessGroupGloo(dist.PrefixStore(pair_prefix(site, incarnation), store), self.rank, 2,
                                            datetime.timedelta(seconds=timeout_s))
        except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError/DistNetworkError/DistStoreError
            raise SiteError(f"could not connect to {self.peer_name}: {_short(exc)}") from exc

    def send(self, kind: str, step: int, tensor: torch.Tensor) -> int:
        """Send one message; returns its size in bytes (header + payload)."""
        if kind not in ALLOWED_KINDS[self.role]:
            raise TransportViolation(f"site {self.site}: the {self.role} may not send {kind!r}; "
                                     f"allowed: {sorted(ALLOWED_KINDS[self.role])}")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype not in DTYPE_CODES or tensor.ndim > MAX_DIMS:
            raise TransportViolation(f"site {self.site}: cannot send a {tensor.dtype} tensor of {tensor.ndim} dims")
        if self.guard is not None:
            self.guard.check(tensor, kind)
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        header[:5] = torch.tensor([MAGIC, KIND_CODES[kind], step, DTYPE_CODES[tensor.dtype], tensor.ndim])
        header[5:5 + tensor.ndim] = torch.tensor(tensor.shape, dtype=torch.int64)
        try:
            self.pg.send([header], self.peer, 0).wait()
            if tensor.numel():
                self.pg.send([tensor], self.peer, 0).wait()
        except Exception as exc:  # noqa: BLE001
            raise SiteError(f"lost {self.peer_name} while sending {kind!r} for step {step}: {_short(exc)}") from exc
        nbytes = header.nbytes + tensor.nbytes
        self.ledger.record(site=self.site, direction="sent", kind=kind, step=step, tensor=tensor, nbytes=nbytes,
                           incarnation=self.incarnation)
        return nbytes

    def recv(self) -> Message:
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        try:
            self.pg.recv([header], self.peer, 0).wait()
        except Exception as exc:  # noqa: BLE001
            raise SiteError(f"lost {self.peer_name} while waiting for a message: {_short(exc)}") from exc
        magic, code, step, dcode, ndim = (int(v) for v in header[:5])
        kind = KIND_NAMES.get(code, f"unknown({code})")
        if magic != MAGIC or dcode not in DTYPES or not 0 <= ndim <= MAX_DIMS:
            raise TransportViolation(f"malformed header from {self.peer_name}: {header.tolist()}")
        if kind not in ALLOWED_KINDS[self.peer_role]:
            raise TransportViolation(f"{self.peer_name} sent {kind!r}, which a {self.peer_role} may not send; "
                                     f"allowed: {sorted(ALLOWED_KINDS[self.peer_role])}")
        shape = [int(v) for v in header[5:5 + ndim]]
        numel = 1
        for s in shape:
            numel *= s
        if any(s < 0 for s in shape) or numel > MAX_PAYLOAD_ELEMENTS:
            raise TransportViolation(f"{self.peer_name} announced an impossible payload shape {shape}")
        tensor = torch.empty(shape, dtype=DTYPES[dcode])
        if tensor.numel():
            try:
                self.pg.recv([tensor], self.peer, 0).wait()
            except Exception as exc:  # noqa: BLE001
                raise SiteError(f"lost {self.peer_name} while receiving {kind!r} for step {step}: {_short(exc)}") from exc
        self.ledger.record(site=self.site, direction="received", kind=kind, step=step, tensor=tensor,
                           nbytes=header.nbytes + tensor.nbytes, incarnation=self.incarnation)
        return Message(kind, step, tensor)


def _short(exc: BaseException) -> str:
    """The first line of a c10d error (the rest is a C++ stack)."""
    text = str(exc).strip().splitlines()
    # gloo appends advice to a closed connection ("This is typically caused by a remote worker crashing...")
    return text[0].split(" This is typically")[0][:400] if text else type(exc).__name__


def kinds_in(entries: Iterable[dict[str, Any]]) -> set[str]:
    return {e["kind"] for e in entries}
