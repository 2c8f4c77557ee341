"""``breastgan audit``: the privacy audit on its own (thin wrapper of :func:`breastgan.sharing.audit.audit_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def parse_thresholds(values: list[str]) -> dict[str, float]:
    """``--threshold max_mia_auc=0.55`` (repeatable) -> {"max_mia_auc": 0.55}."""
    from breastgan.sharing.audit import AuditThresholds

    out: dict[str, float] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or key not in AuditThresholds.model_fields:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(AuditThresholds.model_fields)}",
                                     param_hint="--threshold")
        try:
            out[key] = float(raw)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: {raw!r} is not a number", param_hint="--threshold") from None
    return out


def audit_options(config: Optional[Path], thresholds: list[str], n_samples: Optional[int], no_inversion: bool, seed: int) -> dict[str, Any]:
    import yaml

    opts: dict[str, Any] = yaml.safe_load(config.read_text()) or {} if config is not None else {}
    if thresholds:
        opts["thresholds"] = {**opts.get("thresholds", {}), **parse_thresholds(thresholds)}
    if n_samples is not None:
        opts["n_samples"] = n_samples
    if no_inversion:
        opts["inversion"] = {**opts.get("inversion", {}), "enabled": False}
    opts.setdefault("seed", seed)
    return opts


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"privacy audit: {'PASSED' if report['passed'] else 'FAILED'}")
    for col in ("check", "value", "95% CI", "rule", "ok"):
        table.add_column(col)
    for c in report["checks"]:
        ci = c.get("ci95")
        table.add_row(c["name"], f"{c['value']:.4g}" if c["value"] is not None else "-", f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "-",
                      f"{c['rule']} {c['threshold']:g}", "yes" if c["passed"] else "[red]no[/red]")
    Console().print(table)


def audit_command(
    run: Path = typer.Option(..., "--run", help="a breastgan run directory (its model, EMA weights, is audited; a translator on its translations of --holdout)"),
    holdout: Path = typer.Option(..., "--holdout", help="held-out real images: a prepared set (rows of --holdout-split) or a folder"),
    train: Optional[Path] = typer.Option(None, "--train", help="training images (prepared set or folder); default: the run's own dataset"),
    canaries: Optional[Path] = typer.Option(None, "--canaries", help="folder of canary images planted in the training set"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the full report (JSON) here"),
    checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number"),
    config: Optional[Path] = typer.Option(None, "--config", help="audit options (YAML/JSON, keys of AuditConfig)"),
    threshold: list[str] = typer.Option([], "--threshold", "-t", help="NAME=VALUE, e.g. max_mia_auc=0.55 (repeatable)"),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", min=10, help="synthetic images drawn"),
    no_inversion: bool = typer.Option(False, "--no-inversion", help="skip the white-box latent-inversion attack"),
    train_split: str = typer.Option("train", help="split of a prepared --train set"),
    holdout_split: str = typer.Option("test", help="split of a prepared --holdout set"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Privacy audit of a run: near-copies (pixel/SSIM/feature, flips), DCR vs held-out, membership inference (AUC, TPR@1%FPR)."""
    from breastgan.sharing.audit import audit_run

    ckpt: Any = checkpoint if checkpoint in ("latest", "best") else int(checkpoint)
    report = audit_run(run, holdout, train=train, config=audit_options(config, threshold, n_samples, no_inversion, seed),
                       canaries=canaries, checkpoint=ckpt, train_split=train_split, holdout_split=holdout_split, device=device)
    print_report(report)
    if out is not None:
        from breastgan.utils.atomic import write_json_atomic

        write_json_atomic(out, report)
        err_console.print(f"report: {out}")
    if not report["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("audit")(friendly_errors(audit_command))
