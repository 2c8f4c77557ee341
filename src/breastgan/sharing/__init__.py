"""Sharing generators instead of patients: safe packages, a local registry, a privacy audit gate.

- :func:`export_package` (``breastgan export``): privacy audit, then an atomic package write;
- :func:`load_package` / :func:`verify_package` (``breastgan verify``): hash-first, strict loading
  that never runs code from the package;
- :mod:`breastgan.sharing.hub` (``breastgan hub``): a local index, optional Hugging Face push/pull;
- :func:`run_audit` (``breastgan audit``): near-copies, DCR and membership-inference attacks.

Importing this package registers generator packages as a source of
``breastgan.generation.load_generator`` (generation does not import sharing: it imports the modules
listed in :mod:`breastgan.plugins` by name). Heavy modules load lazily so ``load_generator`` on a
package imports only the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from breastgan.generation.source_loaders import register_source_loader
from breastgan.sharing.loader import VerifyReport, load_package, verify_package
from breastgan.sharing.manifest import FORMAT, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, PackageError, parse_json_bytes

_LAZY = {
    "export_package": ("breastgan.sharing.package", "export_package"),
    "run_audit": ("breastgan.sharing.audit", "run_audit"),
    "audit_run": ("breastgan.sharing.audit", "audit_run"),
    "AuditConfig": ("breastgan.sharing.audit", "AuditConfig"),
    "PrivacyGateError": ("breastgan.sharing.audit", "PrivacyGateError"),
}


def is_package(path: Path) -> bool:
    """A folder with a ``manifest.json`` that is not some other breastgan manifest.

    ``breastgan generate`` also writes a ``manifest.json`` next to its images (its ``format`` is the
    image format, and it has no ``schema_version``): such a folder is a folder of images. Anything else
    with a manifest, valid or not, goes to the package loader, whose checks then say what is wrong.
    """
    f = path / MANIFEST_NAME
    if not path.is_dir() or not (f.is_file() or f.is_symlink()):
        return False
    try:
        obj = parse_json_bytes(f.read_bytes()[: MAX_MANIFEST_BYTES + 1]) if f.is_file() and not f.is_symlink() else None
    except (PackageError, OSError):
        return True
    return obj is None or obj.get("format") == FORMAT or "schema_version" in obj


def _load_package_source(path: Path, *, checkpoint: Any = "latest", ema: bool = True, snapshots: Any = None, device: Any = "cpu"):
    if checkpoint != "latest" or not ema or snapshots is not None:
        raise PackageError(f"{path}: a generator package holds one set of weights (the exported EMA weights); "
                           "checkpoint, raw weights and snapshots apply to run directories")
    return load_package(path, device=device)


register_source_loader("package", is_package, _load_package_source,
                       summary="an exported generator package (manifest.json + the files it lists, hash-checked)")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'breastgan.sharing' has no attribute {name!r}")


__all__ = ["load_package", "verify_package", "VerifyReport", "Manifest", "PackageError", "is_package", *_LAZY]
