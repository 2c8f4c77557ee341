"""dm-GAN across sites: a coordinator and site processes over gloo on localhost.

Real processes: ``breastgan site`` for each site and ``sites_coordinator.py`` (a tiny generator trained
through RemoteSites) for the coordinator, on free ports, 32x32 images, PatchGAN ndf 8. Every wait has a
timeout and every process is killed (its whole session) in ``finally``. The in-process tests exercise
the transport's allowlist and provenance guard over a real 2-rank gloo pair group run by two threads.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import free_port
from breastgan.training.sites.site_worker import DataStream, Site, SiteConfig, load_site_config
from breastgan.training.sites.transport import (
    COORDINATOR,
    SITE,
    ByteLedger,
    PairChannel,
    ProvenanceError,
    ProvenanceGuard,
    TransportViolation,
    read_ledger,
    sha256_tensor,
)

HERE = Path(__file__).resolve().parent
COORDINATOR_SCRIPT = HERE / "sites_coordinator.py"
N_PER_SITE = 12


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"})
    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def make_prepared(root: Path, n_sites: int = 2) -> Path:
    """A minimal prepared set (manifest.csv + .npy images) with a shard column; the images are distinct noise."""
    data = root / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_PER_SITE * n_sites):
        np.save(data / "images" / f"im{i}.npy", rng.random((32, 32)).astype(np.float32))
        rows.append({"item_id": f"im{i}", "file": f"images/im{i}.npy", "split": "train", "shard": i % n_sites})
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return data


def real_images(data: Path, shard: int) -> torch.Tensor:
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    return torch.stack([torch.from_numpy(np.load(data / r["file"]))[None] for r in rows if r["shard"] == str(shard)])


def site_yaml(root: Path, j: int, port: int, **extra) -> Path:
    cfg = {"site_id": j, "coordinator": f"127.0.0.1:{port}", "discriminator": {"arch": "patchgan", "ndf": 8, "n_layers": 2},
           "loss": {"name": "lsgan"}, "batch_size": 4, "seed": j, "checkpoint_every": 2, "site_dir": str(root / f"site{j}"),
           "data": {"split": "train", "shard": j}, "join_timeout_s": 60, **extra}
    p = root / f"site{j}.yaml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return p


class Cluster:
    """The processes of one test; ``kill_all`` ends each one's whole session."""

    def __init__(self, root: Path):
        self.root, self.port, self.procs = root, free_port(), {}
        self.data = make_prepared(root)

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.root / f"{name}.log", "a")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=self.root, start_new_session=True)
        self.procs[name] = p
        return p

    def site(self, j: int, name: str | None = None) -> subprocess.Popen:
        return self.spawn(name or f"site{j}", [sys.executable, "-m", "breastgan", "site", "--config",
                                               str(site_yaml(self.root, j, self.port)), "--data", str(self.data)])

    def coordinator(self, *args: str) -> subprocess.Popen:
        return self.spawn("coordinator", [sys.executable, str(COORDINATOR_SCRIPT), "--address", f"127.0.0.1:{self.port}",
                                          "--out", str(self.root / "coord"), *args])

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text() if p.exists() else ""

    def wait(self, name: str, timeout: float = 120) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout} s\n{self.dump()}") from None

    def progress(self) -> list[dict]:
        p = self.root / "coord" / "progress.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    def wait_for(self, what: str, cond, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            if self.procs["coordinator"].poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.dump()}")

    def result(self) -> dict:
        return json.loads((self.root / "coord" / "result.json").read_text())

    def dump(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)

    def kill_all(self) -> None:
        for name in list(self.procs):
            try:
                self.kill(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.kill_all()


# -- end to end ------------------------------------------------------------------------------------

def test_sync_two_sites_train_checkpoint_and_only_allowed_kinds_cross(cluster):
    cluster.site(0), cluster.site(1)
    cluster.coordinator("--mode", "sync", "--steps", "5", "--checkpoint-at", "2")
    assert cluster.wait("coordinator") == 0, cluster.dump()
    assert cluster.wait("site0", 60) == 0 and cluster.wait("site1", 60) == 0, cluster.dump()
    r = cluster.result()
    assert r["error"] is None and r["steps"] == 5 and r["n_real"] == {"0": N_PER_SITE, "1": N_PER_SITE}
    assert sorted((a["step"], a["site"]) for a in r["answers"]) == [(s, j) for s in range(5) for j in (0, 1)]
    assert all(a["answered_step"] == a["step"] for a in r["answers"])  # sync: every answer is for this step's fakes

    # checkpoints on both sides: G at the requested step and at the end; each D_j after 5 answers
    coord = cluster.root / "coord"
    assert torch.load(coord / "G_step2.pt", weights_only=True)["step"] == 2
    assert torch.load(coord / "G.pt", weights_only=True)["step"] == 5
    for j in (0, 1):
        ck = torch.load(cluster.root / f"site{j}" / "checkpoint.pt", weights_only=True)
        assert ck["answered"] == 5 and ck["last_step"] == 4 and ck["site_id"] == j
        assert "checkpoint (requested at coordinator step 2)" in (cluster.root / f"site{j}" / "site.log").read_text()

    # ledgers, both sides: only the allowlisted kinds, and each side's byte counts match the other's
    coord_ledger = read_ledger(coord / "ledger.jsonl")
    for j in (0, 1):
        site_ledger = read_ledger(cluster.root / f"site{j}" / "ledger.jsonl")
        mine = [e for e in coord_ledger if e["site"] == j]
        assert {e["kind"] for e in mine if e["direction"] == "sent"} == {"generated_images", "control"}
        assert {e["kind"] for e in mine if e["direction"] == "received"} == {"hello", "scalars", "grad_generated"}
        assert {e["kind"] for e in site_ledger if e["direction"] == "sent"} == {"hello", "scalars", "grad_generated"}
        sent_by_site = sum(e["bytes"] for e in site_ledger if e["direction"] == "sent")
        assert sent_by_site == sum(e["bytes"] for e in mine if e["direction"] == "received")
        assert sent_by_site == r["ledger_totals"][str(j)]["bytes_received"]
        # what left the site: 5 gradients (4, 1, 32, 32) float32, 5 x 3 float64 scalars, one hello of 6, each with an 11-int64 header
        assert sent_by_site == 5 * (4 * 32 * 32 * 4 + 88) + 5 * (3 * 8 + 88) + (6 * 8 + 88)
        grads = [e for e in site_ledger if e["kind"] == "grad_generated"]
        assert len(grads) == 5 and all(e["shape"] == [4, 1, 32, 32] for e in grads)

    # provenance: no payload the coordinator received (whole, or any gradient sample) equals any real image of
    # either site, in [0, 1] or model range, nor any real batch the sites recorded reading
    received = {e["sha256"] for e in coord_ledger if e["direction"] == "received"} | set(r["grad_sample_sha256"])
    assert len(r["grad_sample_sha256"]) == 2 * 5 * 4
    for j in (0, 1):
        imgs = real_images(cluster.data, j)
        real_hashes = {sha256_tensor(x) for x in imgs} | {sha256_tensor(x * 2 - 1) for x in imgs}
        prov = [json.loads(x) for x in (cluster.root / f"site{j}" / "provenance.jsonl").read_text().splitlines()]
        assert len(prov) == 5  # one real batch per answer, each recorded
        batch_hashes = {p["batch_sha256"] for p in prov} | {h for p in prov for h in p["sample_sha256"]}
        assert batch_hashes <= real_hashes | {p["batch_sha256"] for p in prov}  # the recorded samples are real images
        assert not received & (real_hashes | batch_hashes)
        summary = json.loads((cluster.root / f"site{j}" / "summary.json").read_text())
        assert summary["provenance"]["payloads_checked"] == 11  # hello + 5 x (scalars, gradient), each checked


def test_async_dead_site_is_logged_training_continues_and_restart_rejoins_from_checkpoint(cluster):
    cluster.site(0), cluster.site(1)
    cluster.coordinator("--mode", "async", "--steps", "8", "--until-rejoin", "1", "--step-sleep", "0.1",
                        "--deadline", "5", "--max-steps", "1000")
    both = lambda: sum(1 in p["answered"] for p in cluster.progress()) >= 3  # noqa: E731
    cluster.wait_for("site 1 answering", both)
    cluster.kill("site1")
    killed_at = len(cluster.progress())
    # training goes on: steps answered by site 0 alone, site 1 no longer live
    cluster.wait_for("steps without site 1", lambda: sum(p["live"] == [0] and p["answered"] == [0]
                                                         for p in cluster.progress()[killed_at:]) >= 3)
    assert cluster.procs["coordinator"].poll() is None
    cluster.site(1, name="site1-restarted")
    assert cluster.wait("coordinator", 180) == 0, cluster.dump()
    assert cluster.wait("site0", 60) == 0 and cluster.wait("site1-restarted", 60) == 0, cluster.dump()
    r = cluster.result()
    assert r["error"] is None
    deaths = [d for d in r["deaths"] if d["site"] == 1]
    assert len(deaths) == 1 and deaths[0]["incarnation"] == 1
    assert sum("site 1" in line and "continues without" in line for line in r["log"]) == 1  # logged once
    rejoin = [j for j in r["joins"] if j["site"] == 1 and j["incarnation"] == 2]
    assert len(rejoin) == 1 and rejoin[0]["answered_before"] >= 2  # resumed from its own checkpoint, not from scratch
    assert "resumed from" in (cluster.root / "site1" / "site.log").read_text()
    after = [a for a in r["answers"] if a["site"] == 1 and a["incarnation"] == 2]
    assert len(after) >= 2
    assert all(a["answered_step"] >= a["step"] - 2 for a in r["answers"])  # bounded staleness
    ck = torch.load(cluster.root / "site1" / "checkpoint.pt", weights_only=True)
    assert ck["answered"] == rejoin[0]["answered_before"] + len(after)


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_async_late_answers_are_used_within_the_staleness_bound_and_dropped_beyond(cluster, max_staleness):
    """A 1 ms deadline: answers arrive after their step (a D_j update, 4 messages and an fsync'd checkpoint every 2
    answers take longer), so they are returned one step late (bound 1) or dropped (bound 0)."""
    cluster.site(0), cluster.site(1)
    cluster.coordinator("--mode", "async", "--steps", "8", "--deadline", "0.001", "--step-sleep", "0.3",
                        "--max-staleness", str(max_staleness))
    assert cluster.wait("coordinator") == 0, cluster.dump()
    r = cluster.result()
    late = [a for a in r["answers"] if a["answered_step"] < a["step"]]
    if max_staleness == 0:
        assert late == [] and sum(r["stale_dropped"].values()) >= 6, r["stale_dropped"]
    else:
        assert len(late) >= 6 and all(a["answered_step"] == a["step"] - 1 for a in late), r["answers"]
        assert r["stale_dropped"] == {}


def test_sync_dead_site_stops_training_with_an_error_naming_it(cluster):
    cluster.site(0), cluster.site(1)
    cluster.coordinator("--mode", "sync", "--steps", "1000", "--step-sleep", "0.2", "--timeout", "60")
    cluster.wait_for("two sync steps", lambda: len(cluster.progress()) >= 2)
    cluster.kill("site1")
    assert cluster.wait("coordinator", 90) == 3, cluster.dump()
    err = cluster.result()["error"]
    assert "site 1" in err and "incarnation 1" in err and "site 0" not in err, err
    assert cluster.wait("site0", 60) == 0  # the survivor was told to stop and stopped cleanly


# -- in process: the transport over a real 2-rank gloo pair ------------------------------------------

def pair(tmp_path: Path, guard: ProvenanceGuard | None = None):
    """(coordinator channel, site channel) over a fresh TCPStore; each end built in its own thread."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port, timeout = free_port(), datetime.timedelta(seconds=20)
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timeout)
    ends: dict[str, PairChannel] = {}

    def build(role, ledger, g):
        # one store client per end, as in separate processes (a client serialises its calls)
        client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
        ends[role] = PairChannel(client, site=0, incarnation=1, role=role, timeout_s=20, ledger=ledger, guard=g)

    threads = [threading.Thread(target=build, args=(COORDINATOR, ByteLedger(tmp_path / "c.jsonl", COORDINATOR), None)),
               threading.Thread(target=build, args=(SITE, ByteLedger(tmp_path / "s.jsonl", SITE), guard))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(ends) == {COORDINATOR, SITE}, "pair group not built within 30 s"
    return ends[COORDINATOR], ends[SITE], store


def receive_in_thread(channel: PairChannel) -> "Callable[[], Any]":
    """Post channel.recv() in a thread (a gloo send completes only once the peer receives); returns a getter."""
    out: dict = {}

    def target():
        try:
            out["msg"] = channel.recv()
        except Exception as exc:  # noqa: BLE001
            out["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def get():
        t.join(30)
        assert out, "recv did not finish within 30 s"
        if "exc" in out:
            raise out["exc"]
        return out["msg"]

    return get


def test_transport_allowlist_refuses_kinds_before_anything_is_sent(tmp_path):
    coord, site, _store = pair(tmp_path)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(TransportViolation, match="site may not send 'generated_images'"):
        site.send("generated_images", 0, x)
    with pytest.raises(TransportViolation, match="coordinator may not send 'grad_generated'"):
        coord.send("grad_generated", 0, x)
    with pytest.raises(TransportViolation):
        site.send("real_images", 0, x)
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "c.jsonl").exists()
    # a well-formed exchange goes through, the receiving side also checks the kind against the sender's allowlist
    got = receive_in_thread(site)
    coord.send("generated_images", 3, x)
    msg = got()
    assert (msg.kind, msg.step) == ("generated_images", 3) and torch.equal(msg.tensor, x)
    site.role = COORDINATOR  # a site that lies about its role still cannot make the coordinator accept images
    got = receive_in_thread(coord)
    site.send("generated_images", 4, torch.zeros(0, 1, 4, 4))  # header only: the coordinator refuses at the header
    with pytest.raises(TransportViolation, match="sent 'generated_images', which a site may not send"):
        got()


def test_provenance_guard_refuses_real_pixels_views_and_copied_samples(tmp_path):
    guard = ProvenanceGuard()
    real = torch.rand(4, 1, 8, 8)
    guard.register_real(real)
    coord, site, _store = pair(tmp_path, guard)
    with pytest.raises(ProvenanceError, match="equals a real image"):
        site.send("grad_generated", 0, real.clone())
    with pytest.raises(ProvenanceError, match="shares memory"):
        site.send("grad_generated", 0, real[1:3])
    smuggled = torch.randn(4, 1, 8, 8)
    smuggled[2] = real[0]
    with pytest.raises(ProvenanceError, match="one of its samples"):
        site.send("grad_generated", 0, smuggled)
    assert not (tmp_path / "s.jsonl").exists()  # nothing was sent
    ok = torch.randn(4, 1, 8, 8)
    got = receive_in_thread(coord)
    site.send("grad_generated", 1, ok)
    assert torch.equal(got().tensor, ok)
    assert guard.summary()["payloads_checked"] == 4


# -- in process: the site's own state ----------------------------------------------------------------

def test_site_resumes_from_its_checkpoint_exactly(tmp_path):
    """A site that checkpoints after 2 answers and restarts gives the 3rd answer an uninterrupted site gives."""
    images = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    fakes = [torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(10 + i)) * 2 - 1 for i in range(3)]

    def cfg(d):
        return SiteConfig(site_id=0, coordinator="127.0.0.1:1", discriminator={"arch": "patchgan", "ndf": 8, "n_layers": 2},
                          loss={"name": "lsgan", "label_smoothing": [0.8, 1.0]}, batch_size=4, seed=3, site_dir=tmp_path / d)

    straight = Site(cfg("a"), images, log=lambda m: None)
    answers = [straight.answer(f) for f in fakes]
    first = Site(cfg("b"), images, log=lambda m: None)
    for f in fakes[:2]:
        first.answer(f)
    first.answered, first.last_step = 2, 1
    first.save_checkpoint("test")
    torch.manual_seed(999)  # the global RNG is part of the checkpoint too
    resumed = Site(cfg("b"), images, log=lambda m: None)
    assert resumed.resumed_from == {"answered": 2, "last_step": 1}
    d, g, grad = resumed.answer(fakes[2])
    assert (d, g) == answers[2][:2] and torch.equal(grad, answers[2][2])
    # and the interrupted run is not trivially equal to a fresh site: the state mattered
    fresh = Site(cfg("c"), images, log=lambda m: None).answer(fakes[2])
    assert not torch.equal(fresh[2], answers[2][2])


def test_data_stream_covers_each_image_once_per_epoch_and_resumes():
    s = DataStream(5, seed=0)
    first = torch.cat([s.take(2) for _ in range(5)])  # 10 draws = 2 epochs
    assert sorted(first[:5].tolist()) == list(range(5)) and sorted(first[5:].tolist()) == list(range(5))
    s2 = DataStream(5, seed=0)
    s2.take(3)
    state = s2.state_dict()
    s3 = DataStream(5, seed=123)
    s3.load_state_dict(state)
    assert torch.equal(s3.take(7), first[3:10])


def test_site_config_errors_name_the_field(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text("site_id: 0\ncoordinator: 127.0.0.1:29500\nbatchsize: 4\n")
    with pytest.raises(ValueError, match=r"site.yaml: invalid site config:\nbatchsize: Extra inputs"):
        load_site_config(p)
    p.write_text("site_id: 0\ncoordinator: nohostport\n")
    with pytest.raises(ValueError, match="coordinator.*expected host:port"):
        load_site_config(p)
    p.write_text("site_id: 0\ncoordinator: h:1\ndiscriminator: {arch: patchgan, ndff: 3}\n")
    with pytest.raises(ValueError, match="discriminator.ndff: unknown option"):
        load_site_config(p)
    p.write_text("site_id: 0\ncoordinator: h:1\nloss: {name: wgan-gp}\n")
    with pytest.raises(ValueError, match="gradient penalty"):
        load_site_config(p)
