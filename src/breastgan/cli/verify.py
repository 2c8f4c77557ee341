"""``breastgan verify``: hashes, schema, architecture, weights and reference samples of a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import friendly_errors


def verify_command(
    package: Path = typer.Argument(..., help="generator package directory"),
    tolerance: Optional[float] = typer.Option(None, help="max |difference| accepted off the exporting device (default: the manifest's)"),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="pin the manifest's sha256 (e.g. from a registry)"),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Verify a generator package (any kind) without running code from it; exit 1 if the reference samples do not reproduce."""
    from breastgan.sharing import verify_package

    report = verify_package(package, device, tolerance=tolerance, expected_manifest_sha256=sha256)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.checks:
            typer.echo(f"ok  {line}")
        typer.echo(f"{'VERIFIED' if report.ok else 'FAILED'}: {report.name} (manifest sha256 {report.manifest_sha256})")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(friendly_errors(verify_command))
