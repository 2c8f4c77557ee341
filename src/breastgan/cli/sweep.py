"""``breastgan sweep``: a grid of runs (any config x any ``--set`` keys x seeds), evaluated and tabulated
(thin wrapper of :mod:`breastgan.training.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def sweep(
        config: Path = typer.Option(..., "--config", "-c", help="a sweep file (base, set, axes, seeds, evaluate; see configs/dgan_wp_tl_study.yaml) or a plain run config"),
        grid: list[str] = typer.Option([], "--grid", "-g", help="an axis over a config key: --grid loss.gp_lambda=0.5,3,5 (repeatable)"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds (default: the sweep file's, else 0)"),
        set_: list[str] = typer.Option([], "--set", "-s", help="override applied to every run: --set train.epochs=2 (repeatable)"),
        out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default: the file's output, else runs/sweeps/<name>)"),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="runs at once (default: as many as cores / threads_per_worker)"),
        summarise_only: bool = typer.Option(False, "--summarise", help="only rebuild the tables, figure and HTML from finished runs"),
    ) -> None:
        """Run every combination, skip finished runs, resume interrupted ones; write results.csv/.md, curves.png and report.html.

        One line per run. Re-running the same command continues where it stopped.
        """
        from breastgan.training import sweep as api

        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else None
        cfg, here = api.load_sweep(config, grid=grid, seeds=seed_list, set_=set_, output=out, workers=workers)
        if summarise_only:
            result = api.summarise(cfg, Path(cfg.output or f"runs/sweeps/{cfg.name}"), api.expand(cfg))
        else:
            result = api.run_sweep(cfg, here, echo=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True))
        done = sum(r.get("status") == "done" for r in result.rows)
        err_console.print(f"{done}/{len(result.rows)} runs done; tables: {result.files['csv']}, {result.files['markdown']}; "
                          f"report: {result.files['html']}" + (f"; figure: {result.files['figure']}" if "figure" in result.files else ""),
                          markup=False, highlight=False, soft_wrap=True)
        if done < len(result.rows):
            raise typer.Exit(1)
