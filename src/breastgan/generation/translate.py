"""Translate a folder or a prepared set image by image, faithful to each input's size and bit depth.

Policy (the reference implementation's users report exactly these going wrong: forced RGB, 16-bit
images through ``convert('RGB')`` and x255, crops instead of full frames):

- grey only: colour inputs are refused (``rgb_policy='error'``), never averaged to grey or
  expanded to RGB;
- the same bit depth and format out as in: 8-bit PNG -> 8-bit PNG, 16-bit PNG/TIFF/PGM -> 16-bit of
  the same format, float .npy/.tif -> float32; nothing passes through 8 bits or through RGB;
- the same relative name and the same size: full frame by default (instance norm normalises
  each image by its own statistics at any size); sides must be multiples of the model's
  ``size_multiple`` (4 for the ResNet generator), else the error names the file and the size;
- ``tile`` / ``overlap``: very large images in tiles, blended with linear (feathered) weights over
  the overlaps. Tiles of an instance-norm model see different statistics than the full frame, so
  tiled output is not the full-frame output (seams); full frame stays the default.

Outputs: the translated images under ``<out>/images/`` (so that folder can go to ``breastgan evaluate
--fake`` as it is), ``preview.png`` (rows input | translated | reconstructed, the last
by the reverse direction when the model has it) and ``translation.json`` (run, direction, policy,
per-image timing and, with a classifier, the lesion-preservation check: the fraction of images
whose predicted lesion/healthy class flips under translation and the mean absolute change of the
lesion probability). Every file is written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from breastgan.data.io import ImageReadError, read_image, write_image
from breastgan.utils.atomic import atomic_path, write_json_atomic

TRANSLATABLE_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".npy")
REVERSE = {"a2b": "b2a", "b2a": "a2b"}
# translated images go to <out>/images/<relative name>, apart from preview.png: a folder handed to
# ``breastgan evaluate --fake`` must hold translations only
IMAGES_DIR = "images"


class TranslateError(ValueError):
    """An input that cannot be translated faithfully; the message names the file and the problem."""


# -- inputs ---------------------------------------------------------------------------------------
def list_inputs(source: Path, split: str | None = None) -> tuple[Path, list[str]]:
    """(root, relative names) of a folder of images or a prepared set (its manifest's ``file`` column)."""
    source = Path(source)
    manifest = source / "manifest.csv"
    if manifest.is_file():
        from breastgan.data.prepared import read_manifest

        rows = read_manifest(source)
        if rows and "file" not in rows[0]:
            raise TranslateError(f"{manifest}: no 'file' column; is {source} a prepared set?")
        names = [r["file"] for r in rows if split is None or r.get("split") == split]
        if not names:
            raise TranslateError(f"{manifest}: no rows{f' with split {split!r}' if split else ''}")
        return source, names
    if split is not None:
        raise TranslateError(f"{source}: --split is for prepared sets (a folder with manifest.csv)")
    if not source.is_dir():
        raise TranslateError(f"{source}: not a folder")
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and p.suffix.lower() in TRANSLATABLE_SUFFIXES)
    others = sorted(p.name for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
    if others:
        raise TranslateError(f"{source}: JPEG inputs {others[:3]} cannot be written back at their own lossless depth; "
                             f"convert them to PNG first (translate reads {list(TRANSLATABLE_SUFFIXES)})")
    if not names:
        raise TranslateError(f"{source}: no images with suffixes {list(TRANSLATABLE_SUFFIXES)}")
    return source, names


def write_like(path: Path, pixels: np.ndarray, suffix: str, bit_depth: int) -> None:
    """Write ``pixels`` ([0, 1] float) in the input's format and depth, atomically."""
    suffix = suffix.lower()
    if suffix == ".npy":
        write_image(path, pixels)
        return
    if suffix == ".png" and bit_depth in (8, 16):
        write_image(path, pixels, bit_depth=bit_depth)
        return
    arr = np.clip(np.asarray(pixels, dtype=np.float32), 0, 1)
    if suffix in (".tif", ".tiff"):
        import tifffile

        data = arr if bit_depth == 32 else (np.round(arr * 255).astype(np.uint8) if bit_depth == 8 else np.round(arr * 65535).astype(np.uint16))
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data)
        return
    if suffix == ".pgm" and bit_depth in (8, 16):
        from PIL import Image

        im = Image.fromarray(np.round(arr * 255).astype(np.uint8)) if bit_depth == 8 else Image.fromarray(np.round(arr * 65535).astype(np.uint16))
        with atomic_path(path) as tmp:
            im.save(tmp, format="PPM")
        return
    raise TranslateError(f"{path}: cannot write a {bit_depth}-bit {suffix} image faithfully")


# -- tiling ---------------------------------------------------------------------------------------
def tile_starts(side: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, side): stride tile - overlap, the last tile flush with the end."""
    if tile >= side:
        return [0]
    stride = tile - overlap
    starts = list(range(0, side - tile, stride))
    return starts + [side - tile]


def feather(length: int, ramp_lo: int, ramp_hi: int) -> torch.Tensor:
    """1-D blending weights: linear ramps of ``ramp_lo`` / ``ramp_hi`` pixels at the two ends, 1 inside."""
    w = torch.ones(length)
    if ramp_lo:
        w[:ramp_lo] = (torch.arange(ramp_lo) + 0.5) / ramp_lo
    if ramp_hi:
        w[length - ramp_hi :] = torch.minimum(w[length - ramp_hi :], (torch.arange(ramp_hi, 0, -1) - 0.5) / ramp_hi)
    return w


def translate_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, multiple: int) -> torch.Tensor:
    """``fn`` over overlapping tiles of x (1, C, H, W), blended with feathered weights over every overlap."""
    if overlap < 0 or overlap >= tile:
        raise TranslateError(f"--overlap must be in [0, tile), got overlap {overlap} with tile {tile}")
    if tile % multiple:
        raise TranslateError(f"--tile {tile} must be a multiple of the model's size multiple {multiple}")
    _, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    acc = torch.zeros(1, c, h, w, dtype=torch.float64)
    norm = torch.zeros(1, 1, h, w, dtype=torch.float64)
    for i, y in enumerate(ys):
        # ramp only where this tile overlaps a neighbour (the image border keeps full weight)
        wy = feather(th, (ys[i - 1] + th - y) if i else 0, (y + th - ys[i + 1]) if i + 1 < len(ys) else 0)
        for j, x0 in enumerate(xs):
            wx = feather(tw, (xs[j - 1] + tw - x0) if j else 0, (x0 + tw - xs[j + 1]) if j + 1 < len(xs) else 0)
            wgt = (wy[:, None] * wx[None, :]).double()
            out = fn(x[..., y : y + th, x0 : x0 + tw]).double()
            acc[..., y : y + th, x0 : x0 + tw] += out * wgt
            norm[..., y : y + th, x0 : x0 + tw] += wgt
    return (acc / norm).float()


# -- lesion preservation --------------------------------------------------------------------------
@torch.no_grad()
def lesion_probabilities(classifier: nn.Module, images01: list[torch.Tensor], image_size: int, positive: int = 1,
                         device: str | torch.device = "cpu") -> torch.Tensor:
    """P(lesion) of each (1, H, W) image, area-resampled to the classifier's input size."""
    was = classifier.training
    classifier.eval()
    try:
        out = []
        for im in images01:
            x = F.interpolate(im[None].float(), size=(image_size, image_size), mode="area") if tuple(im.shape[-2:]) != (image_size, image_size) else im[None].float()
            out.append(classifier(x.to(device)).float().exp()[0, positive].cpu())
        return torch.stack(out)
    finally:
        classifier.train(was)


def lesion_preservation(p_before: torch.Tensor, p_after: torch.Tensor, threshold: float = 0.5) -> dict[str, Any]:
    """Fraction of images whose predicted class flips, and the mean |change| of P(lesion)."""
    before, after = p_before >= threshold, p_after >= threshold
    flips = before != after
    return {"n": int(p_before.numel()), "threshold": threshold, "flip_fraction": float(flips.float().mean()),
            "flips_lesion_to_healthy": int((before & ~after).sum()), "flips_healthy_to_lesion": int((~before & after).sum()),
            "mean_abs_change_p_lesion": float((p_after - p_before).abs().mean()),
            "mean_p_lesion_before": float(p_before.mean()), "mean_p_lesion_after": float(p_after.mean())}


@dataclass
class Classifier:
    """A lesion/healthy classifier: (N, 1, S, S) [0, 1] -> (N, 2) log-probabilities, and where it came from."""

    model: nn.Module
    image_size: int
    source: dict[str, Any]
    positive: int = 1


def load_utility_classifier(run_dir: Path) -> Classifier:
    """The classifier of one ``breastgan utility`` run (``.../runs/<clf>/<fraction>/<arm>/seed<k>``: best.safetensors)."""
    import yaml
    from safetensors.torch import load_file

    from breastgan.utility.classifiers import CLASSIFIERS
    from breastgan.utility.experiment import ExperimentConfig, _slug

    run_dir = Path(run_dir)
    weights = run_dir / "best.safetensors"
    if not weights.is_file():
        raise TranslateError(f"--classifier {run_dir}: no best.safetensors; give one run of a breastgan utility experiment "
                             f"(<experiment>/runs/<classifier>/<fraction>/<arm>/seed<k>)")
    parents = run_dir.resolve().parents
    root = parents[4] if len(parents) > 4 else None
    if root is None or not (root / "config.yaml").is_file():
        raise TranslateError(f"--classifier {run_dir}: the experiment's config.yaml was not found 5 levels up ({root})")
    cfg = ExperimentConfig.model_validate(yaml.safe_load((root / "config.yaml").read_text()))
    slug = run_dir.resolve().parts[-4]
    specs = [c for c in cfg.classifiers if _slug(c.title) == slug]
    if not specs:
        raise TranslateError(f"--classifier {run_dir}: classifier folder {slug!r} matches none of {[c.title for c in cfg.classifiers]} in {root / 'config.yaml'}")
    spec = specs[0]
    model = CLASSIFIERS.build(spec.name, spec.args, num_classes=2, image_size=cfg.image_size)
    model.load_state_dict(load_file(str(weights)))
    positive = cfg.classes.index("lesion") if "lesion" in cfg.classes else 1
    return Classifier(model.eval(), cfg.image_size, {"utility_run": str(run_dir), "classifier": spec.name, "classes": cfg.classes}, positive)


def train_classifier(dataset: Any, *, image_size: int = 64, epochs: int = 5, seed: int = 0, batch_size: int = 32,
                     lr: float = 1e-3) -> Classifier:
    """A lesion/healthy study CNN trained on the fly on a labelled source-domain dataset (labels 0 healthy, 1 lesion)."""
    from breastgan.utility.classifiers import build_cnn

    info = dataset.info
    if info.num_classes != 2:
        raise TranslateError(f"classifier data {info.name!r}: needs two classes (healthy, lesion), has {list(info.class_names)}")
    x = dataset.images if hasattr(dataset, "images") else torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = dataset.labels if hasattr(dataset, "labels") else torch.tensor([dataset[i][1] for i in range(len(dataset))])
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="area")
    torch.manual_seed(seed)
    model = build_cnn(2, image_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 1, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            loss = F.nll_loss(model(x[idx]), y[idx].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y.long()).float().mean())
    positive = list(info.class_names).index("lesion") if "lesion" in info.class_names else 1
    return Classifier(model, image_size, {"trained_on": info.name, "n": len(x), "epochs": epochs, "seed": seed,
                                          "train_accuracy": round(acc, 4)}, positive)


# -- the command's API ----------------------------------------------------------------------------
def _preview(rows: list[list[torch.Tensor]], path: Path, height: int = 128) -> None:
    """Rows of (input, translated[, reconstructed]) thumbnails, 8-bit (a preview for eyes, not data)."""
    from breastgan.utils.images import save_grid

    thumbs = []
    for row in rows:
        for im in row:
            h, w = im.shape[-2:]
            s = height / h
            thumbs.append(F.interpolate(im[None].float(), size=(height, max(1, round(w * s))), mode="area")[0])
    wmax = max(t.shape[-1] for t in thumbs)
    padded = torch.stack([F.pad(t, (0, wmax - t.shape[-1])) for t in thumbs])
    save_grid(padded, path, nrow=len(rows[0]))


def translate_images(gen: Any, direction: str, source: str | Path, out: str | Path, *, tile: int | None = None, overlap: int = 0,
                     split: str | None = None, classifier: Classifier | None = None, preview: int = 4,
                     run: str | None = None, log: Callable[[str], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Translate every image of ``source`` (folder or prepared set) along ``direction`` into ``out``; returns translation.json."""
    gen.check_direction(direction)
    root, names = list_inputs(Path(source), split)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TranslateError(f"{out}: output folder is not empty; choose another or pass overwrite (--overwrite) to write into it")
    out.mkdir(parents=True, exist_ok=True)
    m = int(gen.size_multiple)
    reverse = REVERSE[direction] if REVERSE[direction] in gen.directions else None
    fn = lambda t: gen.translate(t, direction)  # noqa: E731
    records, previews, p_before, p_after = [], [], [], []
    t_all = time.perf_counter()
    for i, name in enumerate(names):
        src = root / name
        try:
            dec = read_image(src, rgb_policy="error")
        except ImageReadError as exc:
            raise TranslateError(f"{exc} (translate takes grey images only: it never maps colour to grey or grey to RGB)") from None
        h, w = dec.pixels.shape
        if h % m or w % m:
            raise TranslateError(f"{src}: image is {h}x{w}; this model needs sides that are multiples of {m} "
                                 f"(crop or pad it to {h - h % m}x{w - w % m} or {math.ceil(h / m) * m}x{math.ceil(w / m) * m})")
        x = torch.from_numpy(dec.pixels)[None, None]
        t0 = time.perf_counter()
        y = translate_tiled(fn, x, tile, overlap, m) if tile else fn(x)
        seconds = time.perf_counter() - t0
        if tuple(y.shape) != tuple(x.shape):
            raise TranslateError(f"{src}: translated shape {tuple(y.shape)} differs from the input's {tuple(x.shape)}")
        dest = out / IMAGES_DIR / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_like(dest, y[0, 0].numpy(), src.suffix, dec.bit_depth)
        records.append({"name": name, "height": h, "width": w, "bit_depth": dec.bit_depth, "source_mode": dec.source_mode,
                        "seconds": round(seconds, 4)})
        if i < preview:
            row = [x[0], y[0]]
            if reverse is not None:
                row.append((translate_tiled(lambda t: gen.translate(t, reverse), y, tile, overlap, m) if tile else gen.translate(y, reverse))[0])
            previews.append(row)
        if classifier is not None:
            pb = lesion_probabilities(classifier.model, [x[0], y[0]], classifier.image_size, classifier.positive)
            p_before.append(pb[0])
            p_after.append(pb[1])
        if log is not None:
            log(f"{name}: {h}x{w}, {dec.bit_depth}-bit, {seconds:.3f} s")
    if previews:
        _preview(previews, out / "preview.png")
    total = time.perf_counter() - t_all
    doc: dict[str, Any] = {
        "run": run, "model": gen.describe(), "direction": direction, "reverse_direction": reverse,
        "input": str(source), "split": split, "n_images": len(records), "images_dir": IMAGES_DIR,
        "policy": {"frame": "tiled" if tile else "full", "tile": tile, "overlap": overlap if tile else None,
                   "blending": "linear feather over overlaps" if tile else None, "size": "same as input", "bit_depth": "same as input",
                   "format": "same as input", "colour": "grey only (colour inputs refused)", "size_multiple": m},
        "preview": {"file": "preview.png" if previews else None, "columns": ["input", "translated", *(["reconstructed"] if reverse else [])],
                    "rows": len(previews)},
        "timing": {"total_seconds": round(total, 3), "translate_seconds": round(sum(r["seconds"] for r in records), 3)},
        "images": records,
    }
    if classifier is not None:
        doc["lesion_preservation"] = {**lesion_preservation(torch.stack(p_before), torch.stack(p_after)), "classifier": classifier.source}
    write_json_atomic(out / "translation.json", doc)
    return doc
