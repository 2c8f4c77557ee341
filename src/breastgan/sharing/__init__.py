"""Sharing generators instead of patients: safe packages, a local registry, a privacy audit gate.

- :func:`export_package` (``breastgan export``): privacy audit, then an atomic package write;
- :func:`load_package` / :func:`verify_package` (``breastgan verify``): hash-first, strict loading
  that never runs code from the package;
- :mod:`breastgan.sharing.hub` (``breastgan hub``): a local index, optional Hugging Face push/pull;
- :func:`run_audit` (``breastgan audit``): near-copies, DCR and membership-inference attacks.

Heavy modules load lazily so ``breastgan.load_generator`` on a package imports only the loader.
"""

from __future__ import annotations

from typing import Any

from breastgan.sharing.loader import VerifyReport, load_package, verify_package
from breastgan.sharing.manifest import Manifest, PackageError

_LAZY = {
    "export_package": ("breastgan.sharing.package", "export_package"),
    "run_audit": ("breastgan.sharing.audit", "run_audit"),
    "audit_run": ("breastgan.sharing.audit", "audit_run"),
    "AuditConfig": ("breastgan.sharing.audit", "AuditConfig"),
    "PrivacyGateError": ("breastgan.sharing.audit", "PrivacyGateError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'breastgan.sharing' has no attribute {name!r}")


__all__ = ["load_package", "verify_package", "VerifyReport", "Manifest", "PackageError", *_LAZY]
