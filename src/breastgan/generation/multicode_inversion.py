"""Multi-code GAN inversion (mGANprior; G1 of dm-GAN): fit N codes and their channel weights to each image.

For every target x (in [0, 1]) the codes z_1..z_N and weights alpha_1..alpha_N of a
:class:`~breastgan.models.multicode.MultiCodeGenerator` are optimised against

    loss(x) = mean over pixels of (render01 - x)^2  +  perceptual_weight * perceptual(render, x),

with render01 = (G1(z, alpha) + 1) / 2. The batch objective is the *sum* of the images' losses
and both optimisers (SGD, Adam) act element-wise, so an image's trajectory does not depend on the
batch it is in: inverting M images together gives what inverting them one at a time gives.

The perceptual term (off by default) is mGANprior's: the mean absolute difference of the two images'
features in a frozen network (mGANprior: VGG16 to relu3_3, weight 0.001). Pass any callable that maps
(B, C, H, W) images in [-1, 1] to a list of feature maps and treats each image on its own, e.g. a
:func:`breastgan.models.backbones.build_backbone` branch built from a local weights file (nothing is
downloaded).

Kept iterate: the *best* one per image (lowest loss seen, the last iterate included), so a
large SGD step that overshoots near the end cannot spoil a fit. Reported ``mse``/``psnr_db`` are of
that iterate's rendering clamped to [0, 1] (the image a PNG of it holds); the optimisation itself
does not clamp (a clamp would zero the gradient of every out-of-range pixel).

Codes fitted to patient images reproduce them: they are patient data.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import numpy as np
import torch

from breastgan.models.multicode import MultiCodeGenerator
from breastgan.registry import Registry

Perceptual = Callable[[torch.Tensor], list[torch.Tensor]]

INVERSION_OPTIMIZERS: Registry[Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]] = Registry("inversion optimizer")
INVERSION_OPTIMIZERS.register("sgd", summary="plain SGD (mGANprior's default: lr 1, 3000 steps)")(lambda params, lr: torch.optim.SGD(params, lr=lr))
INVERSION_OPTIMIZERS.register("adam", summary="Adam, default betas (faster on small budgets; try lr 0.01-0.1)")(lambda params, lr: torch.optim.Adam(params, lr=lr))

KEPT_ITERATE = "best"


@dataclass
class MultiCodeFit:
    codes: torch.Tensor  # (M, N, latent_dim)
    alphas: torch.Tensor  # (M, N, C_l)
    mse: torch.Tensor  # (M,) pixel MSE in [0, 1] units of the kept iterate
    psnr_db: torch.Tensor  # (M,)
    settings: dict[str, Any] = field(default_factory=dict)


def psnr_db(a01: torch.Tensor, b01: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR 10 log10(data_range^2 / MSE) of two (M, ...) batches; inf where they are equal."""
    if a01.shape != b01.shape or a01.ndim < 2:
        raise ValueError(f"psnr_db: expected two batches of the same shape (M, ...), got {tuple(a01.shape)} and {tuple(b01.shape)}")
    mse = ((a01.double() - b01.double()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _pixel_mse(render01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    return ((render01 - target01) ** 2).flatten(1).mean(1)


def _perceptual_distance(perceptual: Perceptual, render01: torch.Tensor, target_feats: list[torch.Tensor]) -> torch.Tensor:
    feats = perceptual(render01 * 2 - 1)
    if len(feats) != len(target_feats):
        raise ValueError(f"perceptual network returned {len(feats)} feature maps for the rendering and {len(target_feats)} for the target")
    return sum((f.float() - t.float()).abs().flatten(1).mean(1) for f, t in zip(feats, target_feats))


def _check_images(g1: MultiCodeGenerator, images01: Any) -> torch.Tensor:
    want = (g1.channels, *g1.image_size)
    if not isinstance(images01, torch.Tensor) or images01.ndim != 4 or tuple(images01.shape[1:]) != want:
        got = tuple(images01.shape) if isinstance(images01, torch.Tensor) else type(images01).__name__
        raise ValueError(f"invert_multicode: expected images of shape (M, {want[0]}, {want[1]}, {want[2]}) for this generator, got {got}")
    x = images01.detach().float()
    if x.shape[0] < 1:
        raise ValueError("invert_multicode: no images")
    if not torch.isfinite(x).all():
        raise ValueError("invert_multicode: images hold NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"invert_multicode: pixel values must lie in [0, 1] (got {lo:.4g}..{hi:.4g}); map model-range [-1, 1] images with (x + 1) / 2")
    return x.clamp(0, 1)


def _check_init(t: torch.Tensor | None, shape: tuple[int, ...], what: str) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"invert_multicode: {what} must have shape {shape}, got {got}")
    return t.detach().float()


def invert_multicode(g1: MultiCodeGenerator, images01: torch.Tensor, *, steps: int = 3000, optimizer: str = "sgd", lr: float = 1.0,
                     perceptual_weight: float = 0.0, perceptual: Perceptual | None = None, seed: int = 0, batch_size: int = 16,
                     codes_init: torch.Tensor | None = None, alphas_init: torch.Tensor | None = None) -> MultiCodeFit:
    """Codes (M, N, latent) and alphas (M, N, C_l) that make ``g1`` reconstruct each of ``images01`` (M, C, H, W) in [0, 1].

    Initial codes are drawn for all M images at once from ``seed`` (image i's start does not depend
    on ``batch_size``); alphas start at 1/N. ``codes_init``/``alphas_init`` replace either.
    """
    if not isinstance(g1, MultiCodeGenerator):
        raise TypeError(f"invert_multicode needs a MultiCodeGenerator, got {type(g1).__name__}")
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invert_multicode: steps and batch_size must be integers >= 1, got {steps!r}, {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"invert_multicode: lr must be a positive number, got {lr!r}")
    make_opt = INVERSION_OPTIMIZERS.get(optimizer)
    if not (math.isfinite(perceptual_weight) and perceptual_weight >= 0):
        raise ValueError(f"invert_multicode: perceptual_weight must be >= 0, got {perceptual_weight!r}")
    if perceptual_weight > 0 and perceptual is None:
        raise ValueError("invert_multicode: perceptual_weight > 0 needs a perceptual network (e.g. build_backbone({'name': 'vgg19', "
                         "'weights': '<local vgg19 .pth>', 'layer': 'block3_conv4'}))")
    x_all = _check_images(g1, images01)
    m, n, lat, c = x_all.shape[0], g1.n_codes, g1.latent_dim, g1.feature_channels
    codes0 = _check_init(codes_init, (m, n, lat), "codes_init")
    alphas0 = _check_init(alphas_init, (m, n, c), "alphas_init")
    if codes0 is None:
        codes0 = g1.init_codes(m, torch.Generator().manual_seed(seed)).cpu()
    if alphas0 is None:
        alphas0 = torch.full((m, n, c), 1.0 / n)
    use_perceptual = perceptual is not None and perceptual_weight > 0
    device = g1.device
    out_codes, out_alphas, out_mse = codes0.clone(), alphas0.clone(), torch.empty(m)
    was_training = g1.training
    g1.eval()
    try:
        for start in range(0, m, batch_size):
            sl = slice(start, min(m, start + batch_size))
            x = x_all[sl].to(device)
            z = codes0[sl].to(device).clone().requires_grad_(True)
            a = alphas0[sl].to(device).clone().requires_grad_(True)
            opt = make_opt([z, a], float(lr))
            with torch.no_grad():
                target_feats = perceptual(x * 2 - 1) if use_perceptual else None
            best = torch.full((x.shape[0],), float("inf"), device=device)
            best_z, best_a = z.detach().clone(), a.detach().clone()
            best_mse = torch.zeros(x.shape[0], device=device)
            with torch.enable_grad():
                for step in range(steps + 1):  # the extra pass scores the last iterate without stepping
                    render = (g1(z, a).float() + 1) / 2
                    per = _pixel_mse(render, x)
                    if use_perceptual:
                        per = per + perceptual_weight * _perceptual_distance(perceptual, render, target_feats)
                    with torch.no_grad():
                        better = per < best
                        best = torch.where(better, per, best)
                        best_z[better], best_a[better] = z[better], a[better]
                        best_mse = torch.where(better, _pixel_mse(render.clamp(0, 1), x), best_mse)
                    if step == steps:
                        break
                    opt.zero_grad(set_to_none=True)
                    per.sum().backward()
                    opt.step()
            out_codes[sl], out_alphas[sl], out_mse[sl] = best_z.cpu(), best_a.cpu(), best_mse.cpu()
    finally:
        g1.train(was_training)
    psnr = (10 * torch.log10(1.0 / out_mse.double())).float()
    settings = {"n_codes": n, "layer": g1.layer, "layer_name": g1.layer_name, "feature_shape": list(g1.feature_shape), "steps": steps,
                "optimizer": optimizer, "lr": float(lr), "perceptual_weight": float(perceptual_weight),
                "perceptual": _describe(perceptual) if use_perceptual else None, "seed": seed, "batch_size": batch_size,
                "codes_init": "given" if codes_init is not None else f"randn(seed={seed})",
                "alphas_init": "given" if alphas_init is not None else f"1/N = {1.0 / n:.6g}", "kept_iterate": KEPT_ITERATE,
                "loss": "sum over images of mean squared pixel error in [0, 1]" + (" + weight x mean |feature difference|" if use_perceptual else "")}
    return MultiCodeFit(out_codes, out_alphas, out_mse, psnr, settings)


def _describe(perceptual: Any) -> Any:
    describe = getattr(perceptual, "describe", None)
    return describe() if callable(describe) else type(perceptual).__name__



# -- the command's API (``breastgan invert``) ---------------------------------------------------------
RECONSTRUCTIONS_DIR = "reconstructions"
SUMMARY = "summary.json"
COMMAND = "breastgan invert"
PATIENT_DATA_WARNING = ("these codes were fitted to the input images and reconstruct them: codes fitted to patient images "
                        "are patient data (share them only as the images themselves may be shared)")


class InversionOutputError(ValueError):
    """An input or output folder ``breastgan invert`` cannot use; the message names it and says why."""


def _versions() -> dict[str, str]:
    import platform

    from breastgan import __version__

    return {"breastgan": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def check_invert_output(out: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``, and even then anything but an earlier invert's output (never deletes foreign files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InversionOutputError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InversionOutputError(f"{out}: output folder is not empty; give an empty or new folder, or --overwrite to replace an earlier invert's output")
    try:
        doc = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("command") != COMMAND:
        raise InversionOutputError(f"{out}: --overwrite replaces only an earlier '{COMMAND}' output (a folder with its {SUMMARY}); "
                                   "this folder holds something else. Nothing was removed")


def read_grey_images(source: str | Path, image_size: tuple[int, int], split: str | None = None) -> tuple[list[str], torch.Tensor]:
    """(relative names, (M, 1, H, W) in [0, 1]) of a folder or prepared set whose images are all ``image_size`` (never resized)."""
    from breastgan.data.io import ImageReadError, read_image
    from breastgan.generation.translate import list_inputs

    root, names = list_inputs(Path(source), split)
    images = []
    for name in names:
        try:
            dec = read_image(root / name, rgb_policy="error")  # colour is refused, never averaged to grey
        except ImageReadError as exc:
            hint = " (invert takes grey images only)" if "colour" in str(exc) else ""
            raise InversionOutputError(f"{exc}{hint}") from None
        if tuple(dec.pixels.shape) != tuple(image_size):
            h, w = dec.pixels.shape
            raise InversionOutputError(f"{root / name}: image is {h}x{w}, the generator makes {image_size[0]}x{image_size[1]} images; "
                                       "invert never resizes: prepare the images at the generator's size")
        images.append(torch.from_numpy(dec.pixels.copy())[None])
    return names, torch.stack(images).float()


def reconstruction_names(names: list[str]) -> list[str]:
    """``reconstructions/<relative name>.png`` of each input; two inputs mapping to one PNG are an error."""
    out = [str(PurePosixPath(RECONSTRUCTIONS_DIR) / PurePosixPath(n).with_suffix(".png")) for n in names]
    seen: dict[str, str] = {}
    for n, o in zip(names, out):
        if o in seen:
            raise InversionOutputError(f"inputs {seen[o]!r} and {n!r} would both be written to {o}; rename one of them")
        seen[o] = n
    return out


@torch.no_grad()
def render01(g1: MultiCodeGenerator, codes: torch.Tensor, alphas: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """(M, C, H, W) images in [0, 1] of fitted codes and alphas."""
    outs = [((g1(codes[i : i + batch_size].to(g1.device), alphas[i : i + batch_size].to(g1.device)).float().clamp(-1, 1) + 1) / 2).cpu()
            for i in range(0, codes.shape[0], batch_size)]
    return torch.cat(outs)


def write_inversion(out: str | Path, g1: MultiCodeGenerator, fit: MultiCodeFit, names: list[str], *, generator_source: str,
                    images_source: str, overwrite: bool = False) -> dict[str, Any]:
    """Write reconstructions/, codes.safetensors, psnr.csv and summary.json into ``out`` as one atomic folder; returns the summary."""
    from safetensors.torch import save_file

    from breastgan.generation.writer import write_array
    from breastgan.utils.atomic import atomic_dir

    out = Path(out)
    check_invert_output(out, overwrite)
    recon_names = reconstruction_names(names)
    recon = render01(g1, fit.codes, fit.alphas, batch_size=int(fit.settings.get("batch_size", 16)))
    psnr = [float(v) for v in fit.psnr_db]
    summary = {
        "command": COMMAND, "generator": generator_source, "images": images_source, "n": len(names),
        "psnr_db": {"mean": float(np.mean(psnr)), "median": float(np.median(psnr)), "min": float(np.min(psnr)), "max": float(np.max(psnr))},
        "mse_mean": float(fit.mse.mean()), "settings": fit.settings, "seed": fit.settings.get("seed"), "g1": g1.describe(),
        "versions": _versions(), "fitted_to_images": True, "warning": PATIENT_DATA_WARNING,
        "outputs": {"reconstructions": f"{RECONSTRUCTIONS_DIR}/ (16-bit grey PNG, one per input, same relative name)",
                    "codes": "codes.safetensors (codes (M, N, latent_dim), alphas (M, N, C_l); row i is psnr.csv's row i)",
                    "psnr": "psnr.csv (file, psnr_db, mse: one row per image, no mean row; the means are here)"},
    }
    meta = {"generator": generator_source, "layer": str(g1.layer), "layer_name": g1.layer_name, "n_codes": str(g1.n_codes),
            "settings": json.dumps(fit.settings, sort_keys=True, default=str), "files": json.dumps(names),
            "fitted_to_images": "true", "warning": PATIENT_DATA_WARNING}
    with atomic_dir(out) as tmp:
        for i, rel in enumerate(recon_names):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_array(dest, recon[i].numpy(), "png", 16)
        save_file({"codes": fit.codes.contiguous(), "alphas": fit.alphas.contiguous()}, str(tmp / "codes.safetensors"), metadata=meta)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "psnr_db", "mse"])
        for name, p, m in zip(names, psnr, fit.mse.tolist()):
            writer.writerow([name, f"{p:.4f}", f"{m:.8g}"])
        (tmp / "psnr.csv").write_text(buf.getvalue())
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return summary


__all__ = ["COMMAND", "INVERSION_OPTIMIZERS", "InversionOutputError", "MultiCodeFit", "PATIENT_DATA_WARNING", "check_invert_output",
           "invert_multicode", "psnr_db", "read_grey_images", "reconstruction_names", "render01", "write_inversion"]
