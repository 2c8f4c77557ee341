"""Shared CLI helpers: one error handler for every command.

Every failure a user can cause (bad config, missing or unreadable file, corrupt image, hostile
package, locked run directory, ...) ends as one ``error: ...`` line on stderr and exit code 2; an
unexpected exception ends as one ``error: internal error ...`` line and exit code 1. ``breastgan
--debug CMD`` or ``BREASTGAN_DEBUG=1`` re-raises instead, so the traceback is shown.

Messages are printed as plain text, never as rich markup: paths and backend messages hold square
brackets (``[/oops].yaml``, ``[/__w/pytorch/.../pair.cc:561]``, ``'^{0,63}$'``) that markup would
rewrite or choke on.
"""

from __future__ import annotations

import functools
import os
import sys

from rich.console import Console
from rich.text import Text

# markup off: every message holds user paths; one message, one line (logs and tests grep them)
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

DEBUG_ENV = "BREASTGAN_DEBUG"
_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = bool(on)


def debug_enabled() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def plain(text: object) -> str:
    """``text`` as one printable line: lone surrogates (undecodable bytes of a path) become escapes."""
    s = str(text)
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, the message printed verbatim (no markup)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", plain(message)))


_KNOWN = (  # exception types that describe the user's input (their message names the file/field)
    ("breastgan.config", "ConfigError"), ("breastgan.registry", "ConfigArgumentError"), ("breastgan.registry", "RegistryError"),
    ("breastgan.distributed", "DistributedError"), ("breastgan.generation.kinds", "GeneratorLoadError"),
    ("breastgan.run_dir", "RunDirError"), ("breastgan.sharing.manifest", "PackageError"), ("breastgan.data.io", "ImageReadError"),
    ("breastgan.data.prepare", "PrepareError"), ("breastgan.training.run_lock", "RunLockedError"),
    ("breastgan.training.checkpoint", "NonFiniteError"), ("breastgan.training.ema", "EMAMismatchError"),
    ("yaml", "YAMLError"),  # a config file that is not YAML (its message has the line and column)
)


def _known_errors() -> tuple[type[BaseException], ...]:
    """Imported lazily (and defensively: the handler itself must never fail)."""
    import importlib

    found: list[type[BaseException]] = []
    for module, name in _KNOWN:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except Exception:  # noqa: BLE001 - a broken optional import must not hide the user's error
            continue
    # ValueError covers its many subclasses (ImageFolderError, PatchError, HubError, PrivacyGateError, ...)
    return (*found, ValueError, OSError, UnicodeError)


def _os_message(exc: OSError) -> str:
    """An OSError with the file it concerns (``[Errno 2] No such file...: 'x'`` reads worse than this)."""
    parts = [str(exc.filename)] if exc.filename is not None else []
    if exc.filename2 is not None:
        parts.append(str(exc.filename2))
    reason = exc.strerror or str(exc)
    return f"{' -> '.join(parts)}: {reason}" if parts and exc.strerror else str(exc)


def report(exc: BaseException, exit_code: int = 2) -> int:
    """Print ``exc`` as one error line; returns the exit code (``exit_code`` for errors in the user's input, 1 otherwise)."""
    if any(c.__name__ == "UsageError" for c in type(exc).__mro__):  # typer.BadParameter raised inside a command body (typer vendors click)
        hint = f"{exc.param_hint}: " if isinstance(getattr(exc, "param_hint", None), str) else ""
        print_error(f"{hint}{exc.format_message()}")
        return 2
    if isinstance(exc, _known_errors()):
        msg = _os_message(exc) if isinstance(exc, OSError) else str(exc)
        if isinstance(exc, KeyError) and exc.args:  # KeyError's str() quotes its argument
            msg = str(exc.args[0])
        print_error(msg)
        return exit_code
    print_error(f"internal error ({type(exc).__name__}): {exc}; run again with --debug or {DEBUG_ENV}=1 for the traceback")
    return 1


def _deliberate_exits() -> tuple[type[BaseException], ...]:
    import typer

    out: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:  # typer vendors its own click; a command may still raise the installed click's Exit
        import click

        out += [click.exceptions.Exit, click.exceptions.Abort]
    except ImportError:
        pass
    return tuple(out)


def friendly_errors(fn=None, *, exit_code: int = 2):
    """Wrap a command: known errors -> one ``error:`` line and ``exit_code``, unexpected ones -> exit 1; --debug re-raises.

    Use as ``@friendly_errors`` or ``@friendly_errors(exit_code=1)``.
    """
    if fn is None:
        return functools.partial(friendly_errors, exit_code=exit_code)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _deliberate_exits():
            raise  # typer.Exit(code) is how commands end on purpose
        except Exception as exc:
            if debug_enabled():
                raise
            sys.exit(report(exc, exit_code))

    return wrapper
