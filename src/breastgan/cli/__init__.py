"""Command-line interface: a thin layer that parses, validates and calls the Python API.

Each sub-command lives in its own module exposing ``register(app)``; add a module name to
``COMMAND_MODULES`` to add a command.
"""

from __future__ import annotations

import importlib

from breastgan.cli.app import app

COMMAND_MODULES = [
    "breastgan.cli.train",
    "breastgan.cli.generate",
    "breastgan.cli.models",
    "breastgan.cli.prepare",
    "breastgan.cli.evaluate",
    "breastgan.cli.utility",
    "breastgan.cli.export",
    "breastgan.cli.verify",
    "breastgan.cli.hub",
    "breastgan.cli.audit",
    "breastgan.cli.sweep",
    "breastgan.cli.translate",
    "breastgan.cli.site",
    "breastgan.cli.invert",
]

_registered = False


def _register_all() -> None:
    global _registered
    if _registered:
        return
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(app)
    _registered = True


def main() -> None:
    _register_all()
    app()


__all__ = ["app", "main"]
