"""``breastgan utility``: run a downstream-utility experiment (thin wrapper of :func:`breastgan.utility.run_experiment`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import friendly_errors


@friendly_errors
def utility_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="experiment YAML (see configs/utility/)"),
    set_: list[str] = typer.Option([], "--set", help="override a config key (YAML value), e.g. --set seeds=[0] --set n_added=60"),
    centre_source: Optional[str] = typer.Option(None, "--centre-source", help="print this centre's images as a data.source for breastgan train (one JSON line) and exit"),
    label: Optional[str] = typer.Option(None, "--label", help="with --centre-source: only this class"),
    split: Optional[str] = typer.Option(None, "--split", help="with --centre-source: only this split (e.g. train, for a GAN of the receiving centre itself)"),
    report: Optional[Path] = typer.Option(None, "--report", help="also insert the results section into this existing report.html"),
    list_classifiers: bool = typer.Option(False, "--list", help="list registered classifiers and exit"),
) -> None:
    """Does synthetic data help a classifier? Arms x training fractions x classifiers x seeds -> mean(std) table."""
    from breastgan.utility import CLASSIFIERS, load_experiment_config, run_experiment

    if list_classifiers:
        for e in CLASSIFIERS:
            typer.echo(f"{e.name:10s} {e.summary}")
        raise typer.Exit()
    if config is None:
        raise typer.BadParameter("missing --config (an experiment YAML; see configs/utility/)", param_hint="--config")
    cfg = load_experiment_config(config, set_)
    if centre_source is not None:
        import json

        from breastgan.utility.centre_source import centre_training_source

        # one JSON line is also YAML: breastgan train --set "data.source=$(breastgan utility ... --centre-source B)"
        typer.echo(json.dumps(centre_training_source(cfg, centre_source, label, split)))
        raise typer.Exit()
    result = run_experiment(cfg, log=typer.echo)
    typer.echo(result.markdown)
    typer.echo(f"results: {result.directory}/table.md, table.csv, results.csv, report.html")
    if report is not None:
        from breastgan.utility.tables import insert_section

        insert_section(report, (result.directory / "utility_section.html").read_text())
        typer.echo(f"added the utility section to {report}")


def register(app: typer.Typer) -> None:
    app.command("utility")(utility_command)
