"""A local registry of verified generator packages, with optional Hugging Face Hub push/pull.

Layout of a hub directory (default ``$BREASTGAN_HUB`` or ``~/.cache/breastgan/hub``)::

    index.json                 {"format": "breastgan-hub-index", "version": 1, "packages": {id: entry}}
    packages/<id>/             a package, exactly as exported (manifest.json + listed files)

A package is fully verified (hashes, schema, architecture, weights, reference samples) before it is
added, and its id ends with the first 12 hex digits of its manifest's sha256; the index records the
full hash, so :meth:`LocalHub.load` pins the manifest a later reader gets. Index updates are
serialised with a lock file and written atomically.

Remote: :func:`push` uploads a verified package; :func:`pull` downloads one at a *pinned* commit
(40 hex digits; branch names and tags can move and are refused), keeps only the files the manifest
lists, verifies them and adds them to the local hub. The transport is a small backend interface, so
tests run offline against a local directory.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

from pydantic import BaseModel, ConfigDict, Field

from breastgan.sharing.loader import check_package_files, load_package, verify_package
from breastgan.sharing.manifest import MANIFEST_NAME, FilesOnly, PackageError, parse_json_bytes
from breastgan.utils.atomic import atomic_dir, write_json_atomic

INDEX_NAME = "index.json"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
METRIC_QUERY = re.compile(r"^([a-z0-9_\-/.]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)$")


class HubError(ValueError):
    """A hub operation that cannot proceed; the message says which package or option."""


class HubEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    modality: str
    height: int
    width: int
    channels: int
    labels: list[str]
    kind: str = "noise"
    architecture: str = Field(description="registry key(s) of the components, comma-separated")
    metrics: dict[str, float | None] = Field(default_factory=dict)
    audit_status: str
    dp_epsilon: float | None = None
    licence: str
    created: str
    manifest_sha256: str
    source: str

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "modality": self.modality, "size": f"{self.height}x{self.width}",
                "labels": ",".join(self.labels) or "-", "audit": self.audit_status,
                "epsilon": "-" if self.dp_epsilon is None else f"{self.dp_epsilon:.3g}", "source": self.source}


class HubIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = "breastgan-hub-index"
    version: int = 1
    packages: dict[str, HubEntry] = Field(default_factory=dict)


def default_hub_dir() -> Path:
    import os

    return Path(os.environ.get("BREASTGAN_HUB", Path.home() / ".cache" / "breastgan" / "hub"))


class LocalHub:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_hub_dir()

    # -- index -----------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[HubIndex]:
        """The index under an exclusive lock; written back (atomically) when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self.index()
            yield index
            write_json_atomic(self.root / INDEX_NAME, index.model_dump(mode="json"))

    def index(self) -> HubIndex:
        f = self.root / INDEX_NAME
        if not f.is_file():
            return HubIndex()
        try:
            return HubIndex.model_validate(json.loads(f.read_text()))
        except (json.JSONDecodeError, ValueError) as exc:
            raise HubError(f"{f}: not a breastgan hub index ({str(exc).splitlines()[0]})") from None

    def list(self) -> list[HubEntry]:
        return sorted(self.index().packages.values(), key=lambda e: e.id)

    def entry(self, ref: str) -> HubEntry:
        """By id, or by name when exactly one package has it."""
        packages = self.index().packages
        if ref in packages:
            return packages[ref]
        named = [e for e in packages.values() if e.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise HubError(f"{ref!r} names {len(named)} packages ({', '.join(e.id for e in named)}); give an id")
        raise HubError(f"no package {ref!r} in {self.root}; available: {', '.join(sorted(packages)) or '(none)'}")

    def path(self, ref: str) -> Path:
        return self.root / "packages" / self.entry(ref).id

    # -- operations ------------------------------------------------------------------------------
    def add(self, package: str | Path, *, source: str = "local", device: str = "cpu") -> HubEntry:
        """Verify ``package`` completely, copy it into the hub and index it."""
        report = verify_package(package, device)
        if not report.ok:
            raise HubError(f"{package}: reference samples do not reproduce ({report.samples}); not added")
        checked = check_package_files(package)
        m = checked.manifest
        pkg_id = f"{m.name}-{checked.manifest_sha256[:12]}"
        dest = self.root / "packages" / pkg_id
        with self._locked() as index:
            if pkg_id not in index.packages:
                with atomic_dir(dest) as tmp:
                    for name in [MANIFEST_NAME, *m.files]:
                        shutil.copyfile(Path(package) / name, tmp / name)
                    check_package_files(tmp, checked.manifest_sha256)  # what landed is what was verified
            index.packages[pkg_id] = HubEntry(
                id=pkg_id, name=m.name, modality=m.modality, height=m.output.height, width=m.output.width, channels=m.output.channels,
                labels=list(m.labels.class_names), kind=m.kind,
                architecture=",".join(sorted({a.key for a in m.component_architectures().values()})),
                metrics={k: v.value for k, v in m.metrics.items()}, audit_status=m.privacy_audit.status + (" (forced)" if m.privacy_audit.forced else ""),
                dp_epsilon=m.differential_privacy.epsilon if m.differential_privacy else None, licence=m.licence, created=m.created,
                manifest_sha256=checked.manifest_sha256, source=source)
            return index.packages[pkg_id]

    def info(self, ref: str) -> dict[str, Any]:
        e = self.entry(ref)
        manifest = json.loads((self.root / "packages" / e.id / MANIFEST_NAME).read_text())
        return {"entry": e.model_dump(mode="json"), "manifest": manifest}

    def remove(self, ref: str) -> HubEntry:
        with self._locked() as index:
            e = self.entry(ref)
            del index.packages[e.id]
            shutil.rmtree(self.root / "packages" / e.id, ignore_errors=True)
            return e

    def load(self, ref: str, device: str = "cpu"):
        e = self.entry(ref)
        return load_package(self.root / "packages" / e.id, device, expected_manifest_sha256=e.manifest_sha256)

    def search(self, *, modality: str | None = None, resolution: str | int | None = None, label: str | None = None,
               metric: str | None = None, max_epsilon: float | None = None, text: str | None = None,
               kind: str | None = None) -> list[HubEntry]:
        """Packages matching every given filter. ``resolution``: 128 or '128x128'; ``metric``: e.g. 'kid<=0.05'."""
        tests = []
        if kind:
            tests.append(lambda e: e.kind == kind)
        if modality:
            tests.append(lambda e: e.modality == modality)
        if resolution is not None:
            h, _, w = str(resolution).partition("x")
            hh, ww = int(h), int(w or h)
            tests.append(lambda e: (e.height, e.width) == (hh, ww))
        if label:
            tests.append(lambda e: label in e.labels)
        if metric:
            m = METRIC_QUERY.match(metric.strip())
            if not m:
                raise HubError(f"metric filter {metric!r}: expected NAME<=VALUE (or <, >, >=), e.g. kid<=0.05")
            name, op, value = m.group(1), m.group(2), float(m.group(3))
            compare = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}[op]
            tests.append(lambda e: e.metrics.get(name) is not None and compare(float(e.metrics[name]), value))
        if max_epsilon is not None:
            tests.append(lambda e: e.dp_epsilon is not None and e.dp_epsilon <= max_epsilon)
        if text:
            tests.append(lambda e: text.lower() in e.name.lower())
        return [e for e in self.list() if all(t(e) for t in tests)]


# -- remote ----------------------------------------------------------------------------------------
class RemoteBackend(Protocol):
    def upload(self, folder: Path, repo_id: str, message: str) -> str:
        """Upload the folder's files; return the commit id (40 hex digits)."""

    def download(self, repo_id: str, revision: str, local_dir: Path) -> Path:
        """Download the repository at ``revision`` into ``local_dir``."""


class HuggingFaceBackend:
    """huggingface_hub's HfApi.upload_folder / snapshot_download (model repositories)."""

    def __init__(self, token: str | None = None, endpoint: str | None = None):
        self.token, self.endpoint = token, endpoint

    def _hf(self) -> Any:
        try:
            import huggingface_hub
        except ImportError:
            raise HubError("Hugging Face push/pull needs the package 'huggingface_hub' (pip install 'breastgan[sharing]')") from None
        return huggingface_hub

    def upload(self, folder: Path, repo_id: str, message: str) -> str:
        hf = self._hf()
        api = hf.HfApi(token=self.token, endpoint=self.endpoint)
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=message)
        return info.oid

    def download(self, repo_id: str, revision: str, local_dir: Path) -> Path:
        hf = self._hf()
        return Path(hf.snapshot_download(repo_id, revision=revision, repo_type="model", local_dir=str(local_dir),
                                         token=self.token, endpoint=self.endpoint))


def push(package: str | Path, repo_id: str, *, backend: RemoteBackend | None = None, message: str | None = None) -> str:
    """Verify and upload a package; returns the commit id to pin when pulling."""
    report = verify_package(package)
    if not report.ok:
        raise HubError(f"{package}: does not verify ({report.samples}); not pushed")
    checked = check_package_files(package)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pkg"
        staged.mkdir()
        for name in [MANIFEST_NAME, *checked.manifest.files]:
            shutil.copyfile(Path(package) / name, staged / name)
        commit = (backend or HuggingFaceBackend()).upload(staged, repo_id, message or f"breastgan package {checked.manifest.name} "
                                                          f"(manifest sha256 {checked.manifest_sha256})")
    if not COMMIT_RE.match(str(commit)):
        raise HubError(f"{repo_id}: the remote returned {commit!r}, not a commit id")
    return commit


def pull(repo_id: str, revision: str, hub: LocalHub, *, backend: RemoteBackend | None = None,
         expected_manifest_sha256: str | None = None) -> HubEntry:
    """Download ``repo_id`` at a pinned commit, keep only the listed files, verify, add to ``hub``."""
    if not COMMIT_RE.match(revision):
        raise HubError(f"revision {revision!r}: pin a full commit id (40 hex digits); branches and tags can change under you")
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = (backend or HuggingFaceBackend()).download(repo_id, revision, Path(tmp) / "download")
        manifest = raw_dir / MANIFEST_NAME
        if not manifest.is_file() or manifest.is_symlink():
            raise PackageError(f"{repo_id}@{revision}: no {MANIFEST_NAME} at the repository root")
        listing = FilesOnly.model_validate({"files": parse_json_bytes(manifest.read_bytes()[: 1 << 21]).get("files")})
        # a hub repository also holds its own bookkeeping (.gitattributes, .cache/); the package is
        # only what the manifest lists, and the loader then refuses anything else
        staged = Path(tmp) / "pkg"
        staged.mkdir()
        for name in [MANIFEST_NAME, *listing.files]:
            src = raw_dir / name
            if src.is_symlink() or not src.is_file():
                raise PackageError(f"{repo_id}@{revision}: listed file {name!r} is missing or not a regular file")
            shutil.copyfile(src, staged / name)
        check_package_files(staged, expected_manifest_sha256)
        return hub.add(staged, source=f"hf://{repo_id}@{revision}")
