"""Name -> component registries.

Every pluggable part of breastgan (datasets, generators, discriminators, losses, metrics,
feature extractors, classifiers, dataset adapters) lives in a :class:`Registry`. Adding a
component is one module plus a decorator; nothing that consumes the registry changes.

Each entry carries an optional pydantic model of its arguments, so a config (or a shared
generator package) can be validated against the component's own schema before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class NoArgs(BaseModel):
    """Argument model for components that take no options."""

    model_config = ConfigDict(extra="forbid")


class RegistryError(KeyError):
    """Unknown name in a registry; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    args_model: type[BaseModel]
    summary: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    def validate_args(self, args: dict[str, Any] | None, where: str = "") -> BaseModel:
        """Validate ``args`` against this entry's argument model, with errors naming the keys."""
        try:
            return self.args_model.model_validate(args or {})
        except ValidationError as exc:
            raise ConfigArgumentError(self, exc, where) from None


class ConfigArgumentError(ValueError):
    """Bad arguments for a registered component, phrased for a user editing a YAML file."""

    def __init__(self, entry: Entry, exc: ValidationError, where: str = ""):
        self.entry = entry
        lines = []
        prefix = f"{where}." if where else ""
        allowed = ", ".join(sorted(entry.args_model.model_fields)) or "(none)"
        for err in exc.errors():
            loc = prefix + ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{loc}: unknown option for {entry.name!r}; allowed options: {allowed}")
            else:
                lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        super().__init__("\n".join(lines))


class Registry(Generic[T]):
    """A named collection of components of one kind (e.g. 'generator')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        args: type[BaseModel] = NoArgs,
        summary: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (obj.__doc__ or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, args, text, tuple(tags))
            return obj

        return deco

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def build(self, name: str, args: dict[str, Any] | None = None, /, **extra: Any) -> Any:
        """Validate ``args`` with the entry's model and call the component with them."""
        entry = self.entry(name)
        parsed = entry.validate_args(args)
        return entry.obj(**parsed.model_dump(), **extra)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
