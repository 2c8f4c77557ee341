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

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

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


__all__ = ["INVERSION_OPTIMIZERS", "MultiCodeFit", "invert_multicode", "psnr_db"]
