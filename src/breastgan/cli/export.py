"""``breastgan export``: privacy audit, then a generator package (thin wrapper of :func:`breastgan.sharing.package.export_package`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def export_command(
    run: Path = typer.Option(..., "--run", help="the trained run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="package directory to create"),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="held-out real images for the audit (prepared set or folder)"),
    train: Optional[Path] = typer.Option(None, "--train", help="training images for the audit (default: the run's dataset)"),
    canaries: Optional[Path] = typer.Option(None, "--canaries", help="folder of canaries planted in the training set"),
    checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number"),
    name: Optional[str] = typer.Option(None, help="package name (lower case; default: the run's name)"),
    description: str = typer.Option("", help="free text for the model card"),
    licence: str = typer.Option("unspecified (ask the publisher)", "--licence", help="licence of the weights, e.g. CC-BY-NC-4.0"),
    modality: str = typer.Option("mammography", help="e.g. mammography, ultrasound"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="metrics.json from `breastgan evaluate` to record"),
    config: Optional[Path] = typer.Option(None, "--audit-config", help="audit options (YAML/JSON, keys of AuditConfig)"),
    threshold: list[str] = typer.Option([], "--threshold", "-t", help="audit threshold NAME=VALUE (repeatable)"),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", min=10, help="synthetic images drawn by the audit"),
    no_inversion: bool = typer.Option(False, "--no-inversion", help="skip the white-box attack"),
    force: bool = typer.Option(False, "--force", help="export although the audit failed or was not run (needs --reason)"),
    reason: Optional[str] = typer.Option(None, "--reason", help="why the gate is overridden (recorded in the manifest)"),
    onnx: bool = typer.Option(False, "--onnx", help="also write generator.onnx (kind noise: z -> images)"),
    onnx_exporter: str = typer.Option("torchscript", help="torchscript (no extra package) or dynamo (needs onnxscript)"),
    medigan: bool = typer.Option(False, "--medigan", help="also write medigan-style metadata (medigan_metadata.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing package at --out"),
    train_split: str = typer.Option("train"),
    holdout_split: str = typer.Option("test"),
    seed: int = typer.Option(0, help="audit seed"),
) -> None:
    """Audit a run's model (any kind) for privacy, then write a safe package (safetensors + manifest + model card)."""
    from breastgan.cli.audit import audit_options, print_report
    from breastgan.sharing.package import export_package

    ckpt: Any = checkpoint if checkpoint in ("latest", "best") else int(checkpoint)
    result = export_package(
        run, out, holdout=holdout, train=train, canaries=canaries, audit=audit_options(config, threshold, n_samples, no_inversion, seed),
        force=force, override_reason=reason, checkpoint=ckpt, name=name, description=description, licence=licence, modality=modality,
        metrics=metrics, onnx=onnx, onnx_exporter=onnx_exporter, medigan=medigan, overwrite=overwrite,
        train_split=train_split, holdout_split=holdout_split,
    )
    if result.audit is not None:
        print_report(result.audit)
    err_console.print(f"package: {result.path}  (manifest sha256 {result.manifest_sha256}; audit {result.manifest.privacy_audit.status})")


def register(app: typer.Typer) -> None:
    app.command("export")(friendly_errors(export_command))
