from __future__ import annotations

import typer

from breastgan.cli.common import friendly_errors


def _options_table(title: str, registry) -> "object":
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("summary")
    table.add_column("options (default)")
    for entry in registry:
        opts = []
        for fname, field in entry.args_model.model_fields.items():
            default = field.default if field.default is not None or not field.is_required() else "required"
            desc = f" - {field.description}" if field.description else ""
            opts.append(f"{fname}={default!r}{desc}")
        table.add_row(entry.name, entry.summary, "\n".join(opts) or "-")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def models() -> None:
        """List the registered architectures, losses, datasets and metrics with their options."""
        from rich.console import Console

        from breastgan.config import _callbacks
        from breastgan.data import DATASETS
        from breastgan.losses import LOSSES
        from breastgan.models import DISCRIMINATORS, GENERATORS

        console = Console()
        for title, reg in (("generators", GENERATORS), ("discriminators", DISCRIMINATORS), ("losses", LOSSES), ("datasets", DATASETS), ("training callbacks", _callbacks())):
            console.print(_options_table(title, reg))
