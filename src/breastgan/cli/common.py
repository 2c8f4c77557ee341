"""Shared CLI helpers: turn known errors into one clear message and exit code 2."""

from __future__ import annotations

import functools
import sys

from rich.console import Console

err_console = Console(stderr=True)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from breastgan.config import ConfigError
        from breastgan.distributed import DistributedError
        from breastgan.registry import ConfigArgumentError, RegistryError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, ConfigArgumentError, RegistryError, DistributedError, FileNotFoundError, FileExistsError, ValueError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(2)

    return wrapper
