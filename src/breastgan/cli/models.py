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
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                default = field.default_factory()
            else:
                default = field.default
            desc = f" - {field.description}" if field.description else ""
            opts.append(f"{fname}={default!r}{desc}")
        table.add_row(entry.name, entry.summary, "\n".join(opts) or "-")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def models() -> None:
        """List the registered recipes, architectures, losses, loss terms, datasets and metrics with their options."""
        from rich.console import Console

        from breastgan.components import registry

        console = Console()
        sections = (("recipes", "recipe"), ("generators", "generator"), ("discriminators", "discriminator"), ("losses", "loss"),
                    ("loss terms", "loss term"), ("datasets", "dataset"), ("metrics (breastgan evaluate, train.eval)", "metric"))
        for title, kind in sections:
            console.print(_options_table(title, registry(kind)))
