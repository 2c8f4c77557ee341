from __future__ import annotations

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
        fmt: str = typer.Option("png", "--format", help="png (grey images) or npy (float32, every channel)."),
        bit_depth: int = typer.Option(16, help="PNG bit depth: 8 or 16."),
        checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number."),
        snapshots: Optional[str] = typer.Option(None, help="Snapshot ensemble: 'all' or comma-separated epochs (e.g. 500,550)."),
        raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA weights."),
        batch_size: int = typer.Option(64, min=1),
        device: str = typer.Option("cpu", help="cpu or cuda."),
    ) -> None:
        """Write synthetic images from a trained run or a generator package (any kind: noise, translation, inversion)."""
        from breastgan.generation import load_generator
        from breastgan.generation.distributed import generate_distributed

        if (run is None) == (package is None):
            raise typer.BadParameter("give exactly one of --run or --package")
        snaps = None if snapshots is None else ("all" if snapshots == "all" else [int(s) for s in snapshots.split(",")])
        ckpt = checkpoint if checkpoint in ("latest", "best") else int(checkpoint)
        gen = load_generator(run or package, checkpoint=ckpt, ema=not raw, snapshots=snaps, device=device)
        if gen.kind == "translation":
            if input_dir is None:
                raise typer.BadParameter(f"{run or package} is a translation model (directions {', '.join(gen.directions)}): "
                                         "give --input FOLDER with the images to translate", param_hint="--input")
            from breastgan.evaluation.sources import from_folder

            gen = gen.bind(from_folder(input_dir).load(), direction)
        elif input_dir is not None or direction is not None:
            raise typer.BadParameter(f"--input/--direction are for translation models; {run or package} is a {gen.kind} model")
        lab = None if label is None else (int(label) if label.isdigit() else label)
        count = n if n is not None else (gen.capacity if gen.capacity is not None else 1000)
        count = generate_distributed(gen, out, n=count, seed=seed, labels=lab, fmt=fmt, bit_depth=bit_depth, batch_size=batch_size)
        if count is not None:
            err_console.print(f"wrote {count} images to {out}")
