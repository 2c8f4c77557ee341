"""The coordinator's side of dm-GAN across sites: :class:`RemoteSites`.

The coordinator hosts a ``torch.distributed.TCPStore`` at the rendezvous address; it is the
registry. A site registers ``site/<id>/latest = k`` (its incarnation) with its shard size, image
shape and config fingerprint, and both sides then build the pair group of (site, k)
(``transport.PairChannel``). Each site is served by one thread of the coordinator (:class:`_Link`)
that sends its requests and receives its answers, so the training loop never blocks on gloo and a
dead or slow site costs only its own thread.

``exchange(fakes, step)``:

- **sync**: every live site gets its fakes and must answer; a site that died or stays silent for
  ``timeout_s`` raises :class:`SiteError` naming it (id, host, incarnation).
- **async**: fakes go to the idle live sites (a site still working on an earlier request gets no
  new one); the call returns the answers that arrived by ``deadline_s`` (sooner if every request
  is answered), keeping answers to fakes at most ``max_staleness`` steps old (older ones are
  dropped and counted). A dead site is logged once and left out; a restarted site (a new
  incarnation in the registry) is picked up at the next call and gets requests again.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from breastgan.training.sites.discriminator import SiteAnswer
from breastgan.training.sites.transport import (
    Address,
    CONTROL_CHECKPOINT,
    CONTROL_STOP,
    COORDINATOR,
    ByteLedger,
    PairChannel,
    SiteError,
    parse_address,
)


class SitesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: Address = Field(..., description="host:port of the rendezvous (the coordinator hosts the TCPStore there)")
    num_sites: int = Field(..., ge=1)
    mode: Literal["sync", "async"] = "sync"
    deadline_s: float = Field(30.0, gt=0, description="async: how long a step waits for answers")
    max_staleness: int = Field(2, ge=0, description="async: answers to fakes older than this many steps are dropped")
    timeout_s: float = Field(300.0, gt=0, description="a site silent this long while it owes an answer is dead")
    join_timeout_s: float = Field(600.0, gt=0, description="how long start() waits for all sites")


_STOP = object()


class _Link(threading.Thread):
    """One site incarnation: builds the pair group, then sends queued requests and posts the answers."""

    def __init__(self, owner: "RemoteSites", site: int, incarnation: int, info: dict[str, Any]):
        super().__init__(name=f"site{site}-inc{incarnation}", daemon=True)
        self.owner, self.site, self.incarnation, self.info = owner, site, incarnation, info
        self.inbox: "queue.Queue[Any]" = queue.Queue()
        self.channel: PairChannel | None = None
        self.busy_step: int | None = None  # the step of the request it is working on

    @property
    def name_for_errors(self) -> str:
        return f"site {self.site} (host {self.info.get('host', '?')}, pid {self.info.get('pid', '?')}, incarnation {self.incarnation})"

    def run(self) -> None:
        post = self.owner._events.put
        try:
            # its own store client: a TCPStore client serialises its calls, and the pair group's rendezvous blocks
            # in store.wait; sharing the main thread's client would stall the registry and the other links
            store = dist.TCPStore(self.owner.host, self.owner.port, is_master=False,
                                  timeout=datetime.timedelta(seconds=self.owner.opts.timeout_s))
            self.channel = PairChannel(store, site=self.site, incarnation=self.incarnation, role=COORDINATOR,
                                       timeout_s=self.owner.opts.timeout_s, ledger=self.owner.ledger,
                                       peer_name=self.name_for_errors)
            hello = self.channel.recv()
            if hello.kind != "hello":
                raise SiteError(f"{self.name_for_errors}: expected hello, got {hello.kind!r}")
            post(("joined", self, hello.tensor.tolist()))
            while True:
                item = self.inbox.get()
                if item is _STOP:
                    self.channel.send("control", -1, torch.tensor([CONTROL_STOP, 0]))
                    post(("stopped", self, None))
                    return
                kind, step, payload = item
                self.channel.send(kind, step, payload)
                if kind != "generated_images":
                    continue
                scalars = self.channel.recv()
                grad = self.channel.recv()
                if (scalars.kind, grad.kind) != ("scalars", "grad_generated") or scalars.step != step or grad.step != step:
                    raise SiteError(f"{self.name_for_errors}: answered step {step} with {scalars.kind}@{scalars.step}, "
                                    f"{grad.kind}@{grad.step}")
                if tuple(grad.tensor.shape) != tuple(payload.shape):
                    raise SiteError(f"{self.name_for_errors}: gradient of shape {tuple(grad.tensor.shape)} for fakes "
                                    f"{tuple(payload.shape)}")
                d_loss, g_loss, n_real = scalars.tensor.tolist()
                answer = SiteAnswer(site=self.site, step=step, d_loss=d_loss, g_loss=g_loss, grad=grad.tensor, n_real=int(n_real))
                self.busy_step = None
                post(("answer", self, answer))
        except Exception as exc:  # noqa: BLE001 - every failure of this site ends its link, not the coordinator
            post(("dead", self, exc if isinstance(exc, SiteError) else SiteError(f"{self.name_for_errors}: {exc}")))


class RemoteSites:
    """The coordinator's view of N remote sites (see the module docstring for the semantics)."""

    def __init__(self, opts: SitesOptions, *, image_shape: tuple[int, int, int], ledger_path: Path | None,
                 log: Callable[[str], Any] | logging.Logger | None = None):
        self.opts = opts
        self.image_shape = tuple(int(s) for s in image_shape)
        self.ledger = ByteLedger(ledger_path, side=COORDINATOR)
        self._log = log.warning if isinstance(log, logging.Logger) else (log or logging.getLogger("breastgan.sites").warning)
        self._events: "queue.Queue[tuple[str, _Link, Any]]" = queue.Queue()
        self.store: dist.TCPStore | None = None
        self._links: dict[int, _Link] = {}  # site -> its current incarnation's link (joined or joining)
        self._live: set[int] = set()
        self._known_inc: dict[int, int] = {}
        self._dead_logged: set[tuple[int, int]] = set()
        self._pending: dict[int, SiteAnswer] = {}  # answers that arrived outside exchange()
        self.n_real: dict[int, int] = {}
        self.stale_dropped: dict[int, int] = {}
        self.deaths: list[dict[str, Any]] = []
        self.joins: list[dict[str, Any]] = []

    # -- registry ------------------------------------------------------------------------------
    def start(self) -> dict[int, int]:
        """Host the rendezvous, wait until every site has joined; returns site id -> n_real."""
        host, port = self.host, self.port = parse_address(self.opts.address)
        try:
            self.store = dist.TCPStore(host, port, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=self.opts.timeout_s))
        except Exception as exc:  # noqa: BLE001
            raise SiteError(f"cannot host the site rendezvous at {self.opts.address} (port in use, or not this machine's "
                            f"address?): {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.store.set("coordinator/info", json.dumps({"num_sites": self.opts.num_sites, "image_shape": list(self.image_shape),
                                                       "mode": self.opts.mode}))
        deadline = time.monotonic() + self.opts.join_timeout_s
        while len(self._live) < self.opts.num_sites:
            self._refresh(strict=True)
            self._drain(timeout=0.2, strict=True)
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.opts.num_sites)) - self._live)
                raise SiteError(f"sites {missing} did not join {self.opts.address} within {self.opts.join_timeout_s:g} s "
                                f"(joined: {sorted(self._live)})")
        return dict(sorted(self.n_real.items()))

    def _refresh(self, strict: bool = False) -> None:
        """Start a link for every site incarnation newer than the one we know."""
        assert self.store is not None, "RemoteSites.start() first"
        for j in range(self.opts.num_sites):
            key = f"site/{j}/latest"
            if not self.store.check([key]):
                continue
            k = int(self.store.get(key))
            if k <= self._known_inc.get(j, 0):
                continue
            self._known_inc[j] = k
            info = json.loads(self.store.get(f"site/{j}/inc{k}/info"))
            if tuple(info["image_shape"]) != self.image_shape:
                msg = f"site {j} (host {info.get('host')}) has images {tuple(info['image_shape'])}; expected {self.image_shape}"
                if strict:
                    raise SiteError(msg)
                self._log(msg + "; ignoring it")
                continue
            old = self._links.get(j)
            if old is not None and j in self._live:
                self._mark_dead(old, SiteError(f"{old.name_for_errors}: superseded by incarnation {k} (the site restarted)"))
            link = _Link(self, j, k, info)
            self._links[j] = link
            link.start()

    def _mark_dead(self, link: _Link, exc: BaseException) -> None:
        if self._links.get(link.site) is link:
            self._live.discard(link.site)
        if (link.site, link.incarnation) not in self._dead_logged:
            self._dead_logged.add((link.site, link.incarnation))
            self.deaths.append({"site": link.site, "incarnation": link.incarnation, "time": time.time(), "reason": str(exc)})
            if self.opts.mode == "async":
                self._log(f"dm-GAN sites: {exc}; training continues without site {link.site} until it restarts")

    def _handle(self, event: tuple[str, _Link, Any], strict: bool) -> SiteAnswer | None:
        what, link, data = event
        current = self._links.get(link.site) is link
        if what == "joined" and current:
            n_real = int(data[0])
            self.n_real[link.site] = n_real
            self._live.add(link.site)
            self.joins.append({"site": link.site, "incarnation": link.incarnation, "n_real": n_real,
                               "answered_before": int(data[4]), "last_step": int(data[5])})
            if link.incarnation > 1 or self.opts.mode == "async":
                self._log(f"dm-GAN sites: site {link.site} joined (incarnation {link.incarnation}, {n_real} images, "
                          f"{int(data[4])} answers before)")
        elif what == "dead":
            was_live = link.site in self._live and current
            self._mark_dead(link, data)
            if strict or (self.opts.mode == "sync" and was_live):
                raise data
        elif what == "answer" and current:
            return data
        return None

    def _drain(self, timeout: float, strict: bool = False) -> list[SiteAnswer]:
        out: list[SiteAnswer] = []
        try:
            event = self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
            while True:
                a = self._handle(event, strict)
                if a is not None:
                    out.append(a)
                event = self._events.get_nowait()
        except queue.Empty:
            pass
        return out

    # -- the training loop's API ---------------------------------------------------------------
    def live_sites(self) -> list[int]:
        return sorted(self._live)

    def incarnations(self) -> dict[int, int]:
        """site -> the incarnation currently linked (a restarted site has a higher one)."""
        return {j: link.incarnation for j, link in sorted(self._links.items())}

    def idle_sites(self) -> list[int]:
        if self.opts.mode == "async":
            self._refresh()
            for a in self._drain(timeout=0):
                self._pending[a.site] = a
        return [j for j in sorted(self._live) if self._links[j].busy_step is None]

    def exchange(self, fakes: dict[int, torch.Tensor], step: int) -> dict[int, SiteAnswer]:
        if self.opts.mode == "sync":
            return self._exchange_sync(fakes, step)
        return self._exchange_async(fakes, step)

    def _submit(self, j: int, fake: torch.Tensor, step: int) -> None:
        fake = fake.detach().to("cpu", torch.float32).contiguous()
        if fake.ndim != 4 or tuple(fake.shape[1:]) != self.image_shape:
            raise ValueError(f"fakes for site {j}: shape {tuple(fake.shape)}, expected (b, {', '.join(map(str, self.image_shape))})")
        link = self._links[j]
        link.busy_step = step
        link.inbox.put(("generated_images", step, fake))

    def _exchange_sync(self, fakes: dict[int, torch.Tensor], step: int) -> dict[int, SiteAnswer]:
        self._drain(timeout=0)  # a death noticed between steps raises here, naming the site
        expected = set(range(self.opts.num_sites))
        if self._live != expected:
            missing = sorted(expected - self._live)
            why = "; ".join(d["reason"] for d in self.deaths if d["site"] in missing) or "not joined"
            raise SiteError(f"sync mode: sites {missing} are not live ({why})")
        if set(fakes) != expected:
            raise ValueError(f"sync mode: exchange() needs fakes for every site {sorted(expected)}, got {sorted(fakes)}")
        for j in sorted(fakes):
            self._submit(j, fakes[j], step)
        answers: dict[int, SiteAnswer] = {}
        # the links time out after timeout_s themselves; this outer bound only guards against a stuck thread
        deadline = time.monotonic() + self.opts.timeout_s + 10.0
        while len(answers) < len(expected):
            for a in self._drain(timeout=0.05):
                answers[a.site] = a
            if time.monotonic() > deadline:
                silent = [self._links[j].name_for_errors for j in sorted(expected - set(answers))]
                raise SiteError(f"sync mode: no answer for step {step} within {self.opts.timeout_s:g} s from {', '.join(silent)}")
        return answers

    def _exchange_async(self, fakes: dict[int, torch.Tensor], step: int) -> dict[int, SiteAnswer]:
        idle = set(self.idle_sites())
        for j in sorted(fakes):
            if j in idle:
                self._submit(j, fakes[j], step)
        arrived = dict(self._pending)
        self._pending.clear()
        deadline = time.monotonic() + self.opts.deadline_s
        while time.monotonic() < deadline:
            if not any(self._links[j].busy_step is not None for j in self._live):
                break  # nothing more can arrive this step
            for a in self._drain(timeout=min(0.02, max(0.0, deadline - time.monotonic()))):
                arrived[a.site] = a
        for a in self._drain(timeout=0):
            arrived[a.site] = a
        kept: dict[int, SiteAnswer] = {}
        for j, a in sorted(arrived.items()):
            if a.step < step - self.opts.max_staleness:
                self.stale_dropped[j] = self.stale_dropped.get(j, 0) + 1
            else:
                kept[j] = a
        return kept

    def request_checkpoint(self, step: int) -> None:
        """Ask every live site to checkpoint its D_j now (after the request it is working on, if any)."""
        for j in sorted(self._live):
            self._links[j].inbox.put(("control", step, torch.tensor([CONTROL_CHECKPOINT, step])))

    def ledger_totals(self) -> dict:
        return self.ledger.totals()

    def close(self, timeout_s: float = 30.0) -> None:
        """Tell the live sites to stop cleanly (each checkpoints first) and wait for their links to finish."""
        links = [self._links[j] for j in sorted(self._live)]
        for link in links:
            link.inbox.put(_STOP)
        deadline = time.monotonic() + timeout_s
        for link in links:
            link.join(max(0.0, deadline - time.monotonic()))
        try:
            self._drain(timeout=0)
        except SiteError:
            pass
        self._live.clear()
