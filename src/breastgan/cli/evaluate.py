"""``breastgan evaluate``: metrics.json and report.html for synthetic vs real images (thin wrapper of
:func:`breastgan.evaluation.evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from breastgan.cli.common import friendly_errors


def _parse_options(values: list[str]) -> dict[str, dict[str, Any]]:
    """``--option lpips.backbone_weights=alex.pth`` -> {"lpips": {"backbone_weights": "alex.pth"}} (values parsed as JSON when possible)."""
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        metric, dot, field = key.partition(".")
        if not sep or not dot or not metric or not field:
            raise typer.BadParameter(f"{item!r}: expected METRIC.OPTION=VALUE, e.g. lpips.backbone_weights=/models/alexnet.pth", param_hint="--option")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(metric, {})[field] = value
    return out


def evaluate_command(
    evaluations: Optional[list[Path]] = typer.Argument(None, help="with --compare: evaluation output folders (metrics.json) to compare"),
    compare: bool = typer.Option(False, "--compare", help="compare evaluation folders given as arguments: compare.csv/.md/.png/.json in --out"),
    force: bool = typer.Option(False, "--force", help="with --compare: compare even when n, extractor or input policy differ (as warnings)"),
    real: Optional[Path] = typer.Option(None, "--real", help="folder of real images (or a prepared dataset folder)"),
    fake: Optional[Path] = typer.Option(None, "--fake", help="folder of synthetic images, a run directory or an exported generator package"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder for metrics.json and report.html"),
    n: Optional[int] = typer.Option(None, "--n", min=2, help="images per set (generators: samples drawn); default: all real images, 5000 samples"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="comma-separated metric names (default: all); see --list"),
    train: Optional[Path] = typer.Option(None, "--train", help="training images for memorisation (default: --real)"),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="real images not used for training (memorisation reference)"),
    option: list[str] = typer.Option([], "--option", "-o", help="METRIC.OPTION=VALUE, repeatable"),
    extractor: Optional[str] = typer.Option(None, "--extractor", help="feature extractor name, or a TorchScript file (.pt) of your own"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="real-feature cache (default $BREASTGAN_CACHE or ~/.cache/breastgan)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write cached real features"),
    seed: int = typer.Option(0, "--seed"),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help="bootstrap replicates for confidence intervals"),
    no_report: bool = typer.Option(False, "--no-report", help="write metrics.json only"),
    list_metrics: bool = typer.Option(False, "--list", help="list metrics and extractors, then exit"),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="a breastgan utility run: lesion-preservation check of a `breastgan translate` output given as --fake"),
) -> None:
    """Evaluate synthetic images against real ones: FID/KID, PRDC, SWD, SSIM family, LPIPS, memorisation, with CIs."""
    from breastgan.evaluation import EXTRACTORS, METRICS, evaluate
    from breastgan.evaluation.sources import is_run_or_package

    if list_metrics:
        for e in METRICS:
            typer.echo(f"{e.name:16s} {e.summary}")
        for e in EXTRACTORS:
            typer.echo(f"extractor {e.name:16s} {e.summary}")
        return
    if compare or evaluations:
        _compare(evaluations or [], out, force)
        return
    missing = [flag for flag, v in (("--real", real), ("--fake", fake), ("--out", out)) if v is None]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (all of --real, --fake and --out are required)")
    assert real is not None and fake is not None and out is not None
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    ext: Any = "inception-fid"
    if extractor:
        ext = {"name": "torchscript", "path": extractor} if extractor.endswith((".pt", ".pth", ".ts")) else extractor
    count = n if n is not None else (5000 if is_run_or_package(fake) else None)
    summary = evaluate(real, fake, n=count, metrics=names, out_dir=out, train=train, heldout=heldout, options=_parse_options(option),
                       extractor=ext, cache_dir=False if no_cache else (cache_dir or True), seed=seed, n_boot=n_boot, report=not no_report,
                       classifier=classifier)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"breastgan evaluate -> {out}")
    for col in ("metric", "value", "95% CI", "n"):
        table.add_column(col)
    for name, m in summary["metrics"].items():
        ci = m.get("ci95")
        table.add_row(name, f"{m['value']:.4g}" if m["value"] is not None else "-", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and None not in ci else "-",
                      ", ".join(f"{k}={v}" for k, v in m["n"].items()))
    console = Console()
    console.print(table)
    for name, reason in summary["skipped"].items():
        console.print(f"skipped {name}: {reason}", markup=False, highlight=False)  # reasons hold paths: never markup
    for w in summary["warnings"]:
        console.print(f"warning: {w}", markup=False, highlight=False)


def _compare(evaluations: list[Path], out: Optional[Path], force: bool) -> None:
    from breastgan.evaluation.compare import compare_evaluations

    if out is None:
        raise typer.BadParameter("--compare writes its table and figure to --out; give an output folder", param_hint="--out")
    summary = compare_evaluations(evaluations, out, force=force)
    typer.echo((out / "compare.md").read_text())
    for w in summary["warnings"]:
        typer.echo(f"warning: not comparable: {w}")
    typer.echo(f"wrote {', '.join(str(out / f) for f in summary['files'])}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(friendly_errors(evaluate_command))
