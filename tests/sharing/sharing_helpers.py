"""Re-sign a tampered package the way an attacker controlling the whole package would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_manifest(pkg: Path) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


def write_manifest(pkg: Path, manifest: dict) -> None:
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2))


def resign(pkg: Path, manifest: dict | None = None) -> dict:
    """Recompute sha256 and size of every listed file, so only the content itself is on trial."""
    m = manifest or read_manifest(pkg)
    for name, entry in m["files"].items():
        data = (pkg / name).read_bytes()
        entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    write_manifest(pkg, m)
    return m
