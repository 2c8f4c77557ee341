"""``breastgan invert``: multi-code GAN inversion (mGANprior, dm-GAN's G1) of a folder or prepared set.

A thin layer over :mod:`breastgan.generation.multicode_inversion`: load one noise generator (a run
directory, a checkpoint directory or a generator package, through the registered source loaders),
read the images (their size must be the generator's), fit codes and alphas, write the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastgan.cli.common import err_console, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def invert(
        generator: Path = typer.Option(..., "--generator", help="A noise-generator run directory, checkpoint directory or generator package."),
        images: Path = typer.Option(..., "--images", help="Folder of grey images (PNG/TIFF/PGM/.npy) or a prepared set, at the generator's size."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: reconstructions/, codes.safetensors, psnr.csv, summary.json."),
        codes: int = typer.Option(20, "--codes", min=1, help="Number of latent codes N (dm-GAN: 20)."),
        layer: int = typer.Option(8, "--layer", help="Composing layer l, 1-based (dm-GAN: 8 on a progressive GAN); see docs/inversion.md."),
        steps: int = typer.Option(3000, "--steps", min=1, help="Optimisation steps per image (mGANprior: 3000)."),
        optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (mGANprior) or adam."),
        lr: float = typer.Option(1.0, "--lr", min=0.0, help="Learning rate (mGANprior: 1 with SGD)."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images optimised together (results do not depend on it)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the initial codes."),
        perceptual_weight: float = typer.Option(0.0, "--perceptual-weight", min=0.0, help="Weight of the perceptual term (mGANprior: 0.001); needs --perceptual-backbone."),
        perceptual_backbone: Optional[str] = typer.Option(None, "--perceptual-backbone", help="Frozen feature network as a spec with a local weights file, e.g. '{name: vgg19, weights: /path/vgg19-dcbb9e9d.pth, layer: block3_conv4}'."),
        split: Optional[str] = typer.Option(None, "--split", help="Prepared sets: only this split."),
        checkpoint: str = typer.Option("latest", help="'latest', 'best' or a step number (run directories)."),
        raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA weights."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier invert's output in --out (default: a non-empty --out is refused)."),
    ) -> None:
        """Fit N latent codes and channel weights per image (mGANprior) and write the reconstructions, codes and PSNR."""
        import yaml

        from breastgan.generation import load_generator
        from breastgan.generation.kinds import LoadedGenerator
        from breastgan.generation.multicode_inversion import check_invert_output, invert_multicode, read_grey_images, write_inversion
        from breastgan.models.multicode import MultiCodeGenerator

        check_invert_output(out, overwrite)  # a refused folder costs no model load
        if (perceptual_weight > 0) != (perceptual_backbone is not None):
            raise typer.BadParameter("--perceptual-weight > 0 and --perceptual-backbone go together", param_hint="--perceptual-backbone")
        ckpt: str | int = checkpoint
        if checkpoint not in ("latest", "best"):
            try:
                ckpt = int(checkpoint)
            except ValueError:
                raise typer.BadParameter(f"{checkpoint!r}: expected 'latest', 'best' or a step number", param_hint="--checkpoint") from None
        gen = load_generator(generator, checkpoint=ckpt, ema=not raw, device=device)
        if not isinstance(gen, LoadedGenerator):
            raise typer.BadParameter(f"{generator} is a {gen.kind} model; invert needs a single noise generator (kind 'noise')",
                                     param_hint="--generator")
        if len(gen.models) != 1:
            raise typer.BadParameter(f"{generator}: {len(gen.models)} generators (a snapshot ensemble) have no single code space",
                                     param_hint="--generator")
        if gen.channels != 1:
            raise typer.BadParameter(f"{generator}: makes {gen.channels}-channel images; invert reads grey images", param_hint="--generator")
        g1 = MultiCodeGenerator(gen.models[0], layer=layer, n_codes=codes)
        names, x = read_grey_images(images, g1.image_size, split)
        perceptual = None
        if perceptual_backbone is not None:
            from breastgan.models.backbones import build_backbone

            perceptual = build_backbone(yaml.safe_load(perceptual_backbone), "--perceptual-backbone").to(device)
        err_console.print(f"inverting {len(names)} images with {codes} codes at layer {layer} ({g1.layer_name}), {steps} {optimizer} steps")
        fit = invert_multicode(g1, x, steps=steps, optimizer=optimizer, lr=lr, perceptual_weight=perceptual_weight, perceptual=perceptual,
                               seed=seed, batch_size=batch_size)
        summary = write_inversion(out, g1, fit, names, generator_source=str(generator), images_source=str(images), overwrite=overwrite)
        err_console.print(f"PSNR mean {summary['psnr_db']['mean']:.2f} dB, median {summary['psnr_db']['median']:.2f} dB over {summary['n']} images; "
                          f"wrote {out}")
        err_console.print(f"warning: {summary['warning']}")
