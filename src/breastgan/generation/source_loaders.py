"""Where ``load_generator`` can load from: a registry of (predicate on a path -> loader function).

Generation registers run and checkpoint directories itself (``generation.loader``). Other parts add
their formats by registering here when they are imported: ``breastgan.sharing`` registers generator
packages. Generation never imports them; :func:`find_source_loader` asks
:func:`breastgan.plugins.load_plugins` to import the modules listed for this registry by name.

A loader is called as ``load(path, *, checkpoint, ema, snapshots, device)`` and returns a loaded kind
(:class:`breastgan.generation.kinds.LoadedModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from breastgan.generation.kinds import GeneratorLoadError
from breastgan.plugins import load_plugins
from breastgan.registry import Registry

PLUGIN_GROUP = "generation.source_loaders"


@dataclass(frozen=True)
class SourceLoader:
    name: str
    accepts: Callable[[Path], bool]
    load: Callable[..., Any]


SOURCE_LOADERS: Registry[SourceLoader] = Registry("generator source")


def register_source_loader(name: str, accepts: Callable[[Path], bool], load: Callable[..., Any], summary: str) -> SourceLoader:
    """Add a source format: ``accepts(path)`` says whether ``load`` should read ``path``."""
    loader = SourceLoader(name, accepts, load)
    SOURCE_LOADERS.register(name, summary=summary)(loader)
    return loader


def find_source_loader(path: str | Path) -> SourceLoader | None:
    """The one registered loader that accepts ``path`` (None when none does); two that both accept are an error."""
    load_plugins(PLUGIN_GROUP)
    p = Path(path)
    matches = [e for e in SOURCE_LOADERS if e.obj.accepts(p)]
    if len(matches) > 1:
        raise GeneratorLoadError(f"{p}: ambiguous source, it looks like {' and '.join(repr(e.name) for e in matches)} "
                                 f"({'; '.join(e.summary for e in matches)})")
    return matches[0].obj if matches else None


def source_kinds() -> list[tuple[str, str]]:
    """(name, summary) of every registered source format, plug-ins included."""
    load_plugins(PLUGIN_GROUP)
    return [(e.name, e.summary) for e in SOURCE_LOADERS]
