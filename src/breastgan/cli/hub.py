"""``breastgan hub``: a local registry of verified packages; optional Hugging Face push/pull (pinned)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors

hub_app = typer.Typer(help="Local registry of verified generator packages (add/list/info/search/remove, push/pull).", no_args_is_help=True)
HUB_OPTION = typer.Option(None, "--hub", help="hub directory (default $BREASTGAN_HUB or ~/.cache/breastgan/hub)")


def _hub(root: Optional[Path]):
    from breastgan.sharing.hub import LocalHub

    return LocalHub(root)


def _table(entries) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    cols = ["id", "modality", "size", "labels", "audit", "epsilon", "source"]
    for c in cols:
        table.add_column(c)
    for e in entries:
        row = e.row()
        table.add_row(*[str(row[c]) for c in cols])
    Console().print(table)


@hub_app.command("add")
@friendly_errors
def add(package: Path = typer.Argument(..., help="package directory"), hub: Optional[Path] = HUB_OPTION) -> None:
    """Verify a package completely and add it to the hub."""
    e = _hub(hub).add(package)
    err_console.print(f"added {e.id}")


@hub_app.command("list")
@friendly_errors
def list_(hub: Optional[Path] = HUB_OPTION) -> None:
    """List the packages in the hub."""
    _table(_hub(hub).list())


@hub_app.command("info")
@friendly_errors
def info(ref: str = typer.Argument(..., help="package id (or unique name)"), hub: Optional[Path] = HUB_OPTION) -> None:
    """Print a package's index entry and manifest."""
    typer.echo(json.dumps(_hub(hub).info(ref), indent=2))


@hub_app.command("search")
@friendly_errors
def search(
    modality: Optional[str] = typer.Option(None), resolution: Optional[str] = typer.Option(None, help="128 or 128x128"),
    label: Optional[str] = typer.Option(None), metric: Optional[str] = typer.Option(None, help="e.g. 'kid<=0.05'"),
    max_epsilon: Optional[float] = typer.Option(None, help="only DP packages with epsilon at most this"),
    name: Optional[str] = typer.Option(None, help="substring of the package name"),
    kind: Optional[str] = typer.Option(None, help="noise, translation or inversion"), hub: Optional[Path] = HUB_OPTION,
) -> None:
    """Find packages by kind, modality, resolution, label, metric or DP epsilon."""
    _table(_hub(hub).search(modality=modality, resolution=resolution, label=label, metric=metric, max_epsilon=max_epsilon, text=name,
                            kind=kind))


@hub_app.command("remove")
@friendly_errors
def remove(ref: str = typer.Argument(...), hub: Optional[Path] = HUB_OPTION) -> None:
    """Remove a package from the hub."""
    err_console.print(f"removed {_hub(hub).remove(ref).id}")


@hub_app.command("push")
@friendly_errors
def push_cmd(package: Path = typer.Argument(...), repo: str = typer.Option(..., "--repo", help="Hugging Face repo id, e.g. centre/model")) -> None:
    """Verify and upload a package to the Hugging Face Hub; prints the commit id to pin."""
    from breastgan.sharing.hub import push

    typer.echo(push(package, repo))


@hub_app.command("pull")
@friendly_errors
def pull_cmd(repo: str = typer.Option(..., "--repo"), revision: str = typer.Option(..., "--revision", help="full commit id (40 hex digits)"),
             hub: Optional[Path] = HUB_OPTION) -> None:
    """Download a package at a pinned commit, verify it and add it to the hub."""
    from breastgan.sharing.hub import pull

    err_console.print(f"added {pull(repo, revision, _hub(hub)).id}")


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
