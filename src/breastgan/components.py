"""Where each registry lives, imported on first use.

Configuration validation (``config.py``) and ``breastgan models`` need the registries of every
part of the pipeline, but must not import the packages that fill them (training, evaluation) at
module load: a config is validated before anything heavy is imported, and a layering rule keeps
config.py free of those packages. Each entry names the module that defines the registry and the
modules whose import registers its members.
"""

from __future__ import annotations

import importlib
from typing import Any

from breastgan.registry import Registry

# kind -> (module defining the registry, attribute, modules that register members on import)
_CATALOG: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dataset": ("breastgan.data", "DATASETS", ()),
    "generator": ("breastgan.models", "GENERATORS", ()),
    "discriminator": ("breastgan.models", "DISCRIMINATORS", ()),
    "loss": ("breastgan.losses", "LOSSES", ()),
    "loss term": ("breastgan.losses", "LOSS_TERMS", ()),
    "recipe": ("breastgan.training.recipes", "RECIPES", ()),
    "metric": ("breastgan.evaluation.context", "METRICS", ("breastgan.evaluation",)),
}


def registry(kind: str) -> Registry[Any]:
    """The registry of ``kind`` with all of breastgan's members registered."""
    if kind not in _CATALOG:
        raise KeyError(f"unknown registry kind {kind!r}; known: {', '.join(sorted(_CATALOG))}")
    module, attr, fillers = _CATALOG[kind]
    reg = getattr(importlib.import_module(module), attr)
    for name in fillers:
        importlib.import_module(name)
    return reg


def kinds() -> list[str]:
    return list(_CATALOG)
