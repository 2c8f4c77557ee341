"""``breastgan generate``: images from a run directory (``--run``) or a generator package (``--package``).

The two flags are two trust levels: ``--package`` loads only through the package loader
(:func:`breastgan.sharing.load_package`: hash-checked files, no unlisted entries, no symlinks) and a
folder that is not a package is refused, even one that looks like a run directory; ``--run`` reads
only run and checkpoint directories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def generate(
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (created); gets one file per image plus manifest.json."),
        run: Optional[Path] = typer.Option(None, "--run", "--from-run", help="A breastgan run directory (or one of its checkpoint directories). Under torchrun use --from-run (torchrun's own parser claims --run as an abbreviation of --run-path)."),
        package: Optional[Path] = typer.Option(None, "--package", help="An exported generator package."),
        n: Optional[int] = typer.Option(None, "-n", min=1, help="Number of images (default: 1000; a translation or inversion model: every image it can make)."),
        seed: int = typer.Option(0, help="Seed: the same seed always gives the same images."),
        label: Optional[str] = typer.Option(None, help="Class for conditional generators (name or index); default: drawn uniformly."),
        input_dir: Optional[Path] = typer.Option(None, "--input", help="Translation models: folder of images to translate (grey PNG/TIFF/PGM/.npy, one size)."),
        direction: Optional[str] = typer.Option(None, help="Translation models: a2b or b2a (default: every direction the model has)."),
        fmt: str = typer.Option("png", "--format", help="png (grey images), npy (float32, every channel) or dicom (Secondary Capture, marked synthetic, with view/laterality tags)."),
        bit_depth: int = typer.Option(16, help="PNG bit depth: 8 or 16."),
        checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number."),
        snapshots: Optional[str] = typer.Option(None, help="Snapshot ensemble: 'all' or comma-separated epochs (e.g. 500,550)."),
        raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA weights."),
        batch_size: int = typer.Option(64, min=1),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace what an earlier generate wrote into --out (default: a non-empty --out is refused)."),
    ) -> None:
        """Write synthetic images from a trained run or a generator package (any kind: noise, translation, inversion)."""
        from breastgan.generation.distributed import generate_distributed

        if (run is None) == (package is None):
            raise typer.BadParameter("give exactly one of --run or --package")
        snaps = None if snapshots is None else ("all" if snapshots == "all" else [_int(s, "--snapshots") for s in snapshots.split(",")])
        ckpt = checkpoint if checkpoint in ("latest", "best") else _int(checkpoint, "--checkpoint")
        from breastgan.generation.writer import prepare_output

        prepare_output(out, overwrite=overwrite, check_only=True)  # a refused folder costs no model load
        if package is not None:
            if ckpt != "latest" or raw or snaps is not None:
                raise typer.BadParameter("a generator package holds one set of weights (the exported EMA weights); "
                                         "--checkpoint, --raw and --snapshots apply to --run", param_hint="--package")
            from breastgan.sharing import load_package

            gen = load_package(package, device=device)
        else:
            from breastgan.generation import load_generator

            gen = load_generator(run, checkpoint=ckpt, ema=not raw, snapshots=snaps, device=device, only="run")
        if gen.kind == "translation":
            if input_dir is None:
                raise typer.BadParameter(f"{run or package} is a translation model (directions {', '.join(gen.directions)}): "
                                         "give --input FOLDER with the images to translate", param_hint="--input")
            from breastgan.evaluation.sources import from_folder

            gen = gen.bind(from_folder(input_dir).load(), direction)
        elif input_dir is not None or direction is not None:
            raise typer.BadParameter(f"--input/--direction are for translation models; {run or package} is a {gen.kind} model")
        _prepare_out(out, overwrite, device)  # the model loaded: now old images may go
        lab = None if label is None else (int(label) if label.isdigit() else label)
        count = n if n is not None else (gen.capacity if gen.capacity is not None else 1000)
        count = generate_distributed(gen, out, n=count, seed=seed, labels=lab, fmt=fmt, bit_depth=bit_depth, batch_size=batch_size)
        if count is not None:
            err_console.print(f"wrote {count} images to {out}")


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected an integer", param_hint=flag) from None


def _prepare_out(out: Path, overwrite: bool, device: str) -> None:
    """Check (and with --overwrite clean) the output folder once, before any process writes to it."""
    from breastgan.generation.writer import OutputFolderError, prepare_output

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        prepare_output(out, overwrite=overwrite)
        return
    # under torchrun rank 0 decides and every rank waits for its answer: no rank may write before the folder is clean
    import torch

    from breastgan.distributed import init_distributed, shutdown

    ctx = init_distributed("cpu" if torch.device(device).type == "cpu" else "auto")
    problem = None
    if ctx.is_main:
        try:
            prepare_output(out, overwrite=overwrite)
        except OutputFolderError as exc:
            problem = str(exc)
    problem = ctx.broadcast_object(problem, what="output folder check")
    if problem is not None:
        shutdown(ctx)
        raise OutputFolderError(problem)
    if ctx.heartbeat is not None:  # the process group stays up for generate_distributed, which starts its own
        ctx.heartbeat.stop()
