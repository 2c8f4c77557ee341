"""One dm-GAN site: its discriminator D_j and its real images, serving the coordinator's requests.

``breastgan site --config site.yaml --data <prepared shard>`` runs :func:`run_site`. The site reads
its real images locally, connects to the coordinator's rendezvous store, registers
``site/<id>`` with a new incarnation number, builds its pair group (``transport.PairChannel``),
says hello, then answers each ``generated_images`` request with one D_j update on its own real
batch (:func:`~breastgan.training.sites.discriminator.site_update`) and sends back only the
scalars and the gradient w.r.t. the generated images. It stops on ``control: stop``.

Its state (D_j, the optimiser, the data-stream position, the RNG states, the number of answered
requests) is checkpointed atomically in the site directory every ``checkpoint_every`` answers, when
the coordinator asks, at a clean stop and when the coordinator is lost; a restarted site resumes
from it and rejoins as the next incarnation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from breastgan.losses.adversarial import LOSSES
from breastgan.models.registry import DISCRIMINATORS
from breastgan.training.sites.discriminator import check_site_loss, site_update
from breastgan.training.sites.transport import (
    Address,
    CONTROL_CHECKPOINT,
    CONTROL_STOP,
    SITE,
    ByteLedger,
    PairChannel,
    ProvenanceGuard,
    SiteError,
    parse_address,
    sha256_tensor,
)
from breastgan.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "breastgan-site-checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"


class OptimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)


class SiteDataOptions(BaseModel):
    """Which rows of the prepared set (``--data``) are this site's real images."""

    model_config = ConfigDict(extra="forbid")
    split: str | None = Field("train", description="manifest split (null: every row)")
    shard: int | None = Field(None, description="only this shard of the manifest's shard column")
    where: dict[str, list[str]] = Field({}, description="extra filters: column -> accepted values")


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site_id: int = Field(..., ge=0, description="0 .. num_sites - 1; the coordinator's site index")
    coordinator: Address = Field(..., description="host:port of the coordinator's rendezvous")
    discriminator: dict[str, Any] = Field({"arch": "patchgan"}, description="{arch: <DISCRIMINATORS name>, ...its args}")
    loss: dict[str, Any] = Field({"name": "lsgan"}, description="{name: <LOSSES name>, ...its args}")
    optim: OptimOptions = OptimOptions()
    batch_size: int = Field(8, ge=1, description="real images per D_j update")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1, description="answered requests between checkpoints")
    site_dir: Path | None = Field(None, description="checkpoint, ledger and log folder (default sites/site<id>)")
    data: SiteDataOptions = SiteDataOptions()
    join_timeout_s: float = Field(600.0, gt=0, description="how long to wait for the coordinator to appear")
    coordinator_timeout_s: float = Field(3600.0, gt=0, description="silence from the coordinator tolerated between requests")

    @field_validator("discriminator")
    @classmethod
    def _disc(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "arch" not in v:
            raise ValueError("needs an 'arch' key (e.g. {arch: patchgan, ndf: 64})")
        return v

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "name" not in v:
            raise ValueError("needs a 'name' key (e.g. {name: lsgan})")
        return v

    def resolved_site_dir(self) -> Path:
        return self.site_dir if self.site_dir is not None else Path("sites") / f"site{self.site_id}"

    def fingerprint(self) -> str:
        """What must match between a checkpoint and the config resuming it (not paths or timeouts)."""
        keep = {k: v for k, v in self.model_dump(mode="json").items()
                if k in ("site_id", "discriminator", "loss", "optim", "batch_size", "seed", "data")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def load_site_config(path: str | Path, *, site_dir: Path | None = None) -> SiteConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    if site_dir is not None:
        raw["site_dir"] = str(site_dir)
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ValueError(f"{path}: invalid site config:\n" + "\n".join(lines)) from None
    build_parts(cfg)  # unknown architectures / bad args fail here, naming the key
    return cfg


def build_parts(cfg: SiteConfig, channels: int = 1):
    d_args = {k: v for k, v in cfg.discriminator.items() if k != "arch"}
    d_entry = DISCRIMINATORS.entry(cfg.discriminator["arch"])
    parsed = d_entry.validate_args(d_args, where="discriminator")
    if "channels" in type(parsed).model_fields and "channels" not in d_args:
        d_args["channels"] = channels
    D = DISCRIMINATORS.build(cfg.discriminator["arch"], d_args)
    l_args = {k: v for k, v in cfg.loss.items() if k != "name"}
    LOSSES.entry(cfg.loss["name"]).validate_args(l_args, where="loss")
    loss = LOSSES.build(cfg.loss["name"], l_args)
    check_site_loss(loss)
    opt = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    return D, opt, loss


def load_site_images(data: Path, opts: SiteDataOptions) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 1]: a prepared set (manifest.csv) or, failing that, an image folder."""
    from breastgan.data.base import build_dataset

    data = Path(data)
    if (data / "manifest.csv").is_file():
        ds = build_dataset("prepared", {"path": str(data), "split": opts.split, "label_column": None, "shard": opts.shard,
                                        "where": opts.where})
    elif data.is_dir():
        if opts.shard is not None or opts.where:
            raise ValueError(f"--data {data}: an image folder has no manifest; data.shard / data.where need a prepared set")
        ds = build_dataset("image_folder", {"root": str(data)})
    else:
        raise FileNotFoundError(f"--data {data}: not a folder")
    images = getattr(ds, "images", None)
    if images is None:
        images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images.float().contiguous()


class DataStream:
    """Seeded epochs of shuffled indices; its position is part of the site checkpoint."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self.perm = torch.randperm(n, generator=self.gen)

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.perm = torch.randperm(self.n, generator=self.gen)
            m = min(k, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + m])
            self.pos, k = self.pos + m, k - m
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "perm": self.perm.clone(), "rng": self.gen.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if int(s["perm"].numel()) != self.n:
            raise ValueError(f"site checkpoint: its data stream covers {int(s['perm'].numel())} images, the data has {self.n}")
        self.epoch, self.pos, self.perm = int(s["epoch"]), int(s["pos"]), s["perm"].clone()
        self.gen.set_state(s["rng"])


class Site:
    """The site's state and its request handler; :meth:`serve` runs the protocol over a channel."""

    def __init__(self, cfg: SiteConfig, images01: torch.Tensor, *, log: Callable[[str], None] = print):
        if images01.ndim != 4 or images01.shape[0] == 0:
            raise ValueError(f"site {cfg.site_id}: expected (N, C, H, W) real images, got {tuple(images01.shape)}")
        self.cfg, self.log = cfg, log
        self.site_dir = cfg.resolved_site_dir()
        self.site_dir.mkdir(parents=True, exist_ok=True)
        self.guard = ProvenanceGuard()
        # both the loaded pixels and their model-range copy are real images: the guard knows every sample of each
        self.images01 = images01
        self.real = (images01 * 2 - 1).contiguous()
        self.guard.register_real(self.images01, pin=True)
        self.guard.register_real(self.real, pin=True)
        self.n_real = int(images01.shape[0])
        self.image_shape = tuple(int(s) for s in images01.shape[1:])
        from breastgan.training.recipes.cyclegan import init_normal

        with torch.random.fork_rng(devices=[]):  # D_j's initial weights follow the site's seed, not the process's RNG
            torch.manual_seed(cfg.seed)
            self.D, self.opt, self.loss = build_parts(cfg, channels=self.image_shape[0])
            init_normal(self.D)  # pix2pix's normal(0.02), as the one-machine recipe initialises its discriminator bank
        self.stream = DataStream(self.n_real, cfg.seed)
        self.label_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.answered, self.last_step, self.resumed_from = 0, -1, None
        self.ledger = ByteLedger(self.site_dir / "ledger.jsonl", side=SITE)
        self.provenance_path = self.site_dir / "provenance.jsonl"
        self._load_checkpoint()

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.site_dir / CHECKPOINT_NAME

    def save_checkpoint(self, reason: str) -> None:
        state = {"format": CHECKPOINT_FORMAT, "site_id": self.cfg.site_id, "fingerprint": self.cfg.fingerprint(),
                 "n_real": self.n_real, "answered": self.answered, "last_step": self.last_step,
                 "D": self.D.state_dict(), "opt": self.opt.state_dict(), "stream": self.stream.state_dict(),
                 "label_rng": self.label_gen.get_state(), "torch_rng": torch.get_rng_state()}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)
        self.log(f"site {self.cfg.site_id}: checkpoint ({reason}) after {self.answered} answers, step {self.last_step}")

    def _load_checkpoint(self) -> None:
        p = self.checkpoint_path
        if not p.is_file():
            return
        try:
            s = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{p}: unreadable site checkpoint ({exc}); move it away to start this site afresh") from None
        if not isinstance(s, dict) or s.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{p}: not a breastgan site checkpoint (format {s.get('format') if isinstance(s, dict) else None!r})")
        if s["fingerprint"] != self.cfg.fingerprint() or s["n_real"] != self.n_real:
            raise ValueError(f"{p}: written by a different site config or data (fingerprint {s['fingerprint']}, n_real {s['n_real']}; "
                             f"now {self.cfg.fingerprint()}, {self.n_real}); use another --site-dir or move it away")
        self.D.load_state_dict(s["D"])
        self.opt.load_state_dict(s["opt"])
        self.stream.load_state_dict(s["stream"])
        self.label_gen.set_state(s["label_rng"])
        torch.set_rng_state(s["torch_rng"])
        self.answered, self.last_step = int(s["answered"]), int(s["last_step"])
        self.resumed_from = {"answered": self.answered, "last_step": self.last_step}
        self.log(f"site {self.cfg.site_id}: resumed from {p} ({self.answered} answers, last step {self.last_step})")

    # -- one request ---------------------------------------------------------------------------
    def real_batch(self) -> torch.Tensor:
        batch = self.real[self.stream.take(self.cfg.batch_size)]
        samples = self.guard.register_real(batch)
        with open(self.provenance_path, "a") as fh:
            fh.write(json.dumps({"answer": self.answered, "batch_sha256": sha256_tensor(batch), "sample_sha256": samples}) + "\n")
        return batch

    def answer(self, fake: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        if fake.ndim != 4 or tuple(fake.shape[1:]) != self.image_shape:
            raise SiteError(f"site {self.cfg.site_id}: generated images of shape {tuple(fake.shape)}; this site's images are "
                            f"(b, {', '.join(map(str, self.image_shape))})")
        self.D.train()
        return site_update(self.D, self.opt, self.loss, self.real_batch(), fake.float(), generator=self.label_gen)

    def hello(self) -> torch.Tensor:
        return torch.tensor([self.n_real, *self.image_shape, self.answered, self.last_step], dtype=torch.float64)

    # -- the protocol --------------------------------------------------------------------------
    def serve(self, channel: PairChannel) -> str:
        """Answer requests until ``control: stop``; returns why it ended."""
        channel.send("hello", self.last_step, self.hello())
        while True:
            msg = channel.recv()
            if msg.kind == "control":
                op = int(msg.tensor[0])
                if op == CONTROL_STOP:
                    self.save_checkpoint("stop")
                    return "stop"
                if op == CONTROL_CHECKPOINT:
                    self.save_checkpoint(f"requested at coordinator step {msg.step}")
                    continue
                raise SiteError(f"site {self.cfg.site_id}: unknown control operation {op}")
            d_loss, g_loss, grad = self.answer(msg.tensor)
            channel.send("scalars", msg.step, torch.tensor([d_loss, g_loss, self.n_real], dtype=torch.float64))
            channel.send("grad_generated", msg.step, grad)
            self.answered, self.last_step = self.answered + 1, msg.step
            if self.answered % self.cfg.checkpoint_every == 0:
                self.save_checkpoint("periodic")


def connect_store(address: str, timeout_s: float) -> torch.distributed.TCPStore:
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    while True:  # the coordinator may start after the site: retry until the join timeout
        try:
            return torch.distributed.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=min(30.0, timeout_s)))
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise SiteError(f"could not reach the coordinator at {address} within {timeout_s:g} s: {exc}") from None
            time.sleep(1.0)


def register(store, site: Site, address: str) -> int:
    """Check the coordinator's expectations, take the next incarnation number and publish this site's info."""
    cfg = site.cfg
    store.wait(["coordinator/info"], datetime.timedelta(seconds=cfg.join_timeout_s))
    coord = json.loads(store.get("coordinator/info"))
    if not 0 <= cfg.site_id < coord["num_sites"]:
        raise ValueError(f"site_id {cfg.site_id}: the coordinator at {address} expects sites 0..{coord['num_sites'] - 1}")
    if tuple(coord["image_shape"]) != site.image_shape:
        raise ValueError(f"site {cfg.site_id}: its images are {site.image_shape} (C, H, W); the coordinator generates "
                         f"{tuple(coord['image_shape'])}")
    inc = int(store.add(f"site/{cfg.site_id}/incarnations", 1))
    info = {"n_real": site.n_real, "image_shape": list(site.image_shape), "fingerprint": cfg.fingerprint(),
            "host": socket.gethostname(), "pid": os.getpid(), "resumed_from": site.resumed_from}
    store.set(f"site/{cfg.site_id}/inc{inc}/info", json.dumps(info))
    store.set(f"site/{cfg.site_id}/latest", str(inc))
    return inc


def run_site(cfg: SiteConfig, data: Path, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the site's images, join the coordinator, serve until it says stop. Returns a summary."""
    site_dir = cfg.resolved_site_dir()
    site_dir.mkdir(parents=True, exist_ok=True)

    def _log(msg: str) -> None:
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(site_dir / "site.log", "a") as fh:
            fh.write(line + "\n")

    log = log or _log
    site = Site(cfg, load_site_images(data, cfg.data), log=log)
    log(f"site {cfg.site_id}: {site.n_real} real images {site.image_shape}; joining {cfg.coordinator}")
    store = connect_store(cfg.coordinator, cfg.join_timeout_s)
    inc = register(store, site, cfg.coordinator)
    channel = PairChannel(store, site=cfg.site_id, incarnation=inc, role=SITE, timeout_s=cfg.coordinator_timeout_s,
                          ledger=site.ledger, guard=site.guard)
    log(f"site {cfg.site_id}: joined as incarnation {inc}")
    try:
        why = site.serve(channel)
    except SiteError:
        site.save_checkpoint("coordinator lost")
        raise
    summary = {"site_id": cfg.site_id, "incarnation": inc, "answered": site.answered, "last_step": site.last_step,
               "ended": why, "ledger": site.ledger.totals().get(cfg.site_id, {}), "provenance": site.guard.summary()}
    with atomic_path(site_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"site {cfg.site_id}: stopped cleanly after {site.answered} answers")
    return summary
