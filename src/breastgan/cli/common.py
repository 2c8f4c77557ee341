"""Shared CLI helpers: turn known errors into one clear message and exit code 2."""

from __future__ import annotations

import functools
import sys

from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)  # one message, one line: logs and tests grep them


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from breastgan.config import ConfigError
        from breastgan.distributed import DistributedError
        from breastgan.registry import ConfigArgumentError, RegistryError
        from breastgan.training.run_lock import RunLockedError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, ConfigArgumentError, RegistryError, DistributedError, FileNotFoundError, FileExistsError, ValueError,
                RunLockedError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(2)

    return wrapper
