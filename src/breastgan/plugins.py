"""Extensions that a registry's owner must not import itself, named here and imported by name.

The layering rules (tests/test_layering.py) keep ``breastgan.generation`` from importing
``breastgan.sharing``; yet ``load_generator(package_dir)`` must load a generator package. So sharing
registers its package loader in generation's source-loader registry when it is imported, and
generation asks :func:`load_plugins` to import the modules listed for that registry the first time a
source is looked up. This module imports nothing from breastgan: it only holds names.
"""

from __future__ import annotations

import importlib
import importlib.util

# registry group -> modules that register into it when imported
PLUGINS: dict[str, tuple[str, ...]] = {
    "generation.source_loaders": ("breastgan.sharing",),
}

_loaded: set[tuple[str, str]] = set()


def load_plugins(group: str) -> list[str]:
    """Import every module listed for ``group`` once; returns the modules imported by this call.

    A listed module that is not installed is skipped (optional parts); one that is installed but fails
    to import raises, so a broken plug-in is never mistaken for an absent one.
    """
    imported = []
    for name in PLUGINS.get(group, ()):
        if (group, name) in _loaded:
            continue
        if importlib.util.find_spec(name) is None:
            _loaded.add((group, name))
            continue
        importlib.import_module(name)
        _loaded.add((group, name))
        imported.append(name)
    return imported
