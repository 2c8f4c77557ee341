"""``breastgan translate``: image-to-image translation of a folder or prepared set (generation/translate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def translate(
        run: Path = typer.Option(..., "--run", help="A translation run directory, checkpoint directory or package (kind translation)."),
        direction: str = typer.Option(..., "--direction", help="a2b or b2a."),
        input_dir: Path = typer.Option(..., "--input", help="Folder of grey images (PNG/TIFF/PGM/.npy, any sizes) or a prepared set."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/<same relative names>, preview.png, translation.json."),
        tile: Optional[int] = typer.Option(None, "--tile", min=4, help="Translate in tiles of this side (default: full frame)."),
        overlap: int = typer.Option(0, "--overlap", min=0, help="Tile overlap in pixels, blended linearly."),
        split: Optional[str] = typer.Option(None, "--split", help="Prepared sets: only this split."),
        classifier: Optional[Path] = typer.Option(None, "--classifier", help="Lesion-preservation check with this breastgan utility run's classifier."),
        classifier_data: Optional[str] = typer.Option(None, "--classifier-data", help="Or train one on the fly on this labelled source-domain dataset spec (JSON/YAML, e.g. '{dataset: phantom, n: 256, size: 64}')."),
        classifier_epochs: int = typer.Option(5, min=1, help="Epochs of the on-the-fly classifier."),
        checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number."),
        raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA weights."),
        preview: int = typer.Option(4, min=0, help="Images in preview.png."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty output folder."),
    ) -> None:
        """Translate images with a CycleGAN / pix2pix model at their own size and bit depth (16-bit in, 16-bit out)."""
        import yaml

        from breastgan.generation import load_generator
        from breastgan.generation.translate import load_utility_classifier, train_classifier, translate_images

        if classifier is not None and classifier_data is not None:
            raise typer.BadParameter("give at most one of --classifier and --classifier-data", param_hint="--classifier")
        ckpt = checkpoint if checkpoint in ("latest", "best") else int(checkpoint)
        gen = load_generator(run, checkpoint=ckpt, ema=not raw, device=device)
        if gen.kind != "translation":
            raise typer.BadParameter(f"{run} is a {gen.kind} model; translate needs kind 'translation' (breastgan generate makes its images)",
                                     param_hint="--run")
        clf = None
        if classifier is not None:
            clf = load_utility_classifier(classifier)
        elif classifier_data is not None:
            from breastgan.data.paired import build_domain

            spec = yaml.safe_load(classifier_data)
            clf = train_classifier(build_domain(spec, "--classifier-data"), epochs=classifier_epochs)
        doc = translate_images(gen, direction, input_dir, out, tile=tile, overlap=overlap, split=split, classifier=clf,
                               preview=preview, run=str(run), overwrite=overwrite)
        err_console.print(f"translated {doc['n_images']} images ({direction}) to {out / doc['images_dir']} "
                          f"in {doc['timing']['total_seconds']} s; translation.json and preview.png in {out}")
        if "lesion_preservation" in doc:
            lp = doc["lesion_preservation"]
            err_console.print("lesion preservation: " + json.dumps({k: lp[k] for k in ("n", "flip_fraction", "mean_abs_change_p_lesion")}))
