"""Shared test helpers: the tiny run config, and re-signing a tampered package the way an attacker
controlling the whole package would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

TINY = {
    "name": "tiny",
    "data": {"source": {"dataset": "phantom", "n": 128, "size": 32, "seed": 3}},
    "model": {"generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16},
              "discriminator": {"arch": "dcgan", "base_width": 8, "kernel_size": 4}},
    "train": {"batch_size": 16, "max_steps": 10, "log_every": 5, "sample_every": 10, "checkpoint_every": 10, "progress": False, "grid_size": 4},
}


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
