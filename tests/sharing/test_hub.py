"""Local hub add/list/info/search/remove, and Hugging Face push/pull against an offline fake remote."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from sharing_helpers import read_manifest, resign, write_manifest

from breastgan.sharing import PackageError
from breastgan.sharing.hub import HubError, HuggingFaceBackend, LocalHub, pull, push


class FakeRemote:
    """Commits stored as folders; downloads mimic huggingface_hub's local_dir layout (.gitattributes, .cache/)."""

    def __init__(self, root: Path):
        self.root = root

    def upload(self, folder: Path, repo_id: str, message: str) -> str:
        h = hashlib.sha1(repo_id.encode())
        for f in sorted(folder.iterdir()):
            h.update(f.name.encode() + f.read_bytes())
        commit = h.hexdigest()
        shutil.copytree(folder, self.root / repo_id / commit)
        return commit

    def download(self, repo_id: str, revision: str, local_dir: Path) -> Path:
        src = self.root / repo_id / revision
        if not src.is_dir():
            raise FileNotFoundError(f"{repo_id}@{revision}")
        shutil.copytree(src, local_dir)
        (local_dir / ".gitattributes").write_text("*.safetensors filter=lfs\n")
        (local_dir / ".cache" / "huggingface").mkdir(parents=True)
        return local_dir


def test_add_list_info_search_remove(exported, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    e = hub.add(exported)
    assert e.id.startswith("tiny-phantom-") and e.manifest_sha256 == hashlib.sha256((exported / "manifest.json").read_bytes()).hexdigest()
    assert [x.id for x in hub.list()] == [e.id] and hub.add(exported).id == e.id  # adding again is idempotent
    assert hub.info("tiny-phantom")["manifest"]["components"]["generator"]["architecture"]["key"] == "dcgan"
    assert e.kind == "noise" and e.architecture == "dcgan" and hub.search(kind="noise") == [e] and hub.search(kind="translation") == []
    assert hub.search(modality="mammography", resolution=32) == [e]
    assert hub.search(resolution="64x64") == [] and hub.search(label="lesion") == []  # unconditional package
    assert hub.search(metric="missing<=1") == [] and hub.search(max_epsilon=10) == []
    with pytest.raises(HubError, match="NAME<=VALUE"):
        hub.search(metric="kid is small")
    g = hub.load(e.id)
    assert g.sample(2, seed=0).shape == (2, 1, 32, 32)
    hub.remove(e.id)
    assert hub.list() == [] and not (tmp_path / "hub" / "packages" / e.id).exists()
    with pytest.raises(HubError, match="no package"):
        hub.entry(e.id)


def test_hub_search_by_metric_and_label(package, tmp_path):
    m = read_manifest(package)
    m["metrics"] = {"kid": {"value": 0.02, "ci95": [0.01, 0.03], "n": {"real": 100, "fake": 100}}}
    write_manifest(package, m)
    hub = LocalHub(tmp_path / "hub")
    e = hub.add(package)
    assert hub.search(metric="kid<=0.05") == [e] and hub.search(metric="kid<0.01") == []


def test_hub_load_pins_the_indexed_manifest(exported, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    e = hub.add(exported)
    stored = tmp_path / "hub" / "packages" / e.id
    m = read_manifest(stored)
    m["description"] = "swapped after indexing"
    resign(stored, m)  # internally consistent, but not the manifest the hub verified
    with pytest.raises(PackageError, match="pinned"):
        hub.load(e.id)


def test_tampered_package_is_not_added(package, tmp_path):
    data = bytearray((package / "generator.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (package / "generator.safetensors").write_bytes(bytes(data))
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(PackageError, match="sha256 mismatch"):
        hub.add(package)
    assert hub.list() == []


def test_push_and_pull_with_a_pinned_revision(exported, tmp_path):
    remote = FakeRemote(tmp_path / "remote")
    commit = push(exported, "centre-a/tiny-phantom", backend=remote)
    hub = LocalHub(tmp_path / "hub")
    e = pull("centre-a/tiny-phantom", commit, hub, backend=remote)
    assert e.source == f"hf://centre-a/tiny-phantom@{commit}" and hub.load(e.id).sample(1).shape == (1, 1, 32, 32)
    with pytest.raises(HubError, match="pin a full commit"):
        pull("centre-a/tiny-phantom", "main", hub, backend=remote)
    # a remote that changed a file under the same commit is caught by the hashes
    weights = tmp_path / "remote" / "centre-a/tiny-phantom" / commit / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(PackageError, match="sha256 mismatch"):
        pull("centre-a/tiny-phantom", commit, LocalHub(tmp_path / "hub2"), backend=remote)


def test_huggingface_backend_uses_huggingface_hub_offline(exported, tmp_path, monkeypatch):
    import huggingface_hub

    remote = FakeRemote(tmp_path / "remote")
    calls = {}

    class FakeApi:
        def __init__(self, token=None, endpoint=None):
            pass

        def create_repo(self, repo_id, repo_type=None, exist_ok=False):
            calls["create"] = (repo_id, repo_type, exist_ok)

        def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None):
            calls["upload"] = commit_message
            return SimpleNamespace(oid=remote.upload(Path(folder_path), repo_id, commit_message))  # CommitInfo's field we read

    def fake_snapshot_download(repo_id, *, revision, repo_type, local_dir, token=None, endpoint=None):
        calls["download"] = (repo_id, revision, repo_type)
        return str(remote.download(repo_id, revision, Path(local_dir)))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    commit = push(exported, "centre-a/tiny", backend=HuggingFaceBackend())
    e = pull("centre-a/tiny", commit, LocalHub(tmp_path / "hub"), backend=HuggingFaceBackend())
    assert calls["create"] == ("centre-a/tiny", "model", True) and calls["download"] == ("centre-a/tiny", commit, "model")
    assert e.name == "tiny-phantom" and "manifest sha256" in calls["upload"]
