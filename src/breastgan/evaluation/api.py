"""``evaluate``: every requested metric on real vs synthetic images, to ``metrics.json`` and ``report.html``.

Inputs may be tensors ((N, 1, H, W) in [0, 1]), folders of images, objects with the dataset contract,
generators (``.sample(n, seed=...)``), or paths to breastgan run directories / generator packages
(loaded with ``breastgan.load_generator``). Each metric's options are validated against its own
pydantic model before anything runs, so a typo fails in a second, not after an hour of Inception.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from breastgan.evaluation.context import METRICS, EvaluationContext, MetricResult, MetricSkipped, run_metric
from breastgan.evaluation.features import default_cache_dir
from breastgan.evaluation.sources import is_run_or_package, resolve_source
from breastgan.utils.atomic import write_json_atomic

# Cheap-to-expensive; IS and LPIPS skip themselves (with the reason) unless a classifier / backbone weights are given.
DEFAULT_METRICS = ("fid", "fid_inf", "kid", "prdc", "embedding-swd", "swd", "psnr", "ssim", "ms-ssim", "perceptual-inception", "lpips", "is",
                   "memorisation")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_json_safe(v) for v in (sorted(obj) if isinstance(obj, set) else obj)]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def evaluate(
    real: Any,
    fake: Any,
    *,
    n: int | None = None,
    metrics: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    train: Any = None,
    heldout: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    extractor: Any = "inception-fid",
    cache_dir: str | Path | None | bool = True,
    seed: int = 0,
    n_boot: int = 200,
    report: bool = True,
    run_dir: str | Path | None = None,
    classifier: Any = None,
) -> dict[str, Any]:
    """Evaluate ``fake`` against ``real``; returns the metrics.json content (and writes it under ``out_dir``).

    ``n``: images per set (real: a seeded random subset; generators: samples drawn). ``train``: the
    generator's training images for memorisation (default: ``real``); ``heldout``: real images not
    used in training (the memorisation reference). ``options``: per-metric options, e.g.
    ``{"lpips": {"backbone_weights": "alexnet.pth"}}``. ``cache_dir``: True for the default
    (``$BREASTGAN_CACHE`` or ``~/.cache/breastgan``), False/None to disable.
    """
    t_start = time.perf_counter()
    names = list(metrics) if metrics else list(DEFAULT_METRICS)
    options = dict(options or {})
    unknown_opts = sorted(set(options) - set(names))
    if unknown_opts:
        raise ValueError(f"options given for metrics that are not requested: {', '.join(unknown_opts)} (requested: {', '.join(names)})")
    for name in names:  # validate every name and option block before any expensive work
        METRICS.entry(name).validate_args(options.get(name), where=f"options.{name}")

    cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    ctx = EvaluationContext(
        real=resolve_source(real, n, seed, role="real"),
        fake=resolve_source(fake, n, seed + 1, role="fake"),
        train=resolve_source(train, None, seed, role="train") if train is not None else None,
        heldout=resolve_source(heldout, None, seed, role="heldout") if heldout is not None else None,
        extractor_spec=extractor, cache_dir=cache, seed=seed, n_boot=n_boot,
    )

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    all_results: list[MetricResult] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            for r in run_metric(name, ctx, options.get(name)):
                results[r.name] = r.to_json()
                all_results.append(r)
        except MetricSkipped as exc:
            skipped[name] = str(exc)
        timings[name] = round(time.perf_counter() - t0, 3)
    if not results:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ValueError(f"no metric could be computed ({reasons})")
    timings.update({k: round(v, 3) for k, v in ctx.timings.items()})
    # conversions made while reading files are part of the result, never silent (defect 8 of issue 12)
    conversion_warnings = [w for role in ("real", "fake", "train", "heldout")
                           if (role in ("real", "fake") or getattr(ctx, role) is not None)
                           for w in ctx.source(role).conversion_warnings(role)]
    advice = _small_n_advice(all_results)
    lesion = None
    if classifier is not None:
        from breastgan.evaluation.lesion import lesion_check

        t0 = time.perf_counter()
        lesion = lesion_check(fake, classifier)
        timings["lesion_preservation"] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - t_start, 3)

    extractor_desc = None
    if any(k.startswith("features") for k in ctx.timings):
        extractor_desc = ctx.extractor().describe()
    summary = _json_safe({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "breastgan_version": _version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "seed": seed,
        "n_boot": n_boot,
        "inputs": {role: ctx.source(role).describe() for role in ("real", "fake")}
        | ({"train": ctx.train.describe()} if ctx.train else {}) | ({"heldout": ctx.heldout.describe()} if ctx.heldout else {}),
        "extractor": extractor_desc,
        "metrics": results,
        "skipped": skipped,
        "warnings": conversion_warnings + sorted({w for r in all_results for w in r.warnings}) + advice,
        "conversions": conversion_warnings,
        **({"lesion_preservation": lesion} if lesion is not None else {}),
        "timings_s": timings,
    })
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", summary)
        if report:
            from breastgan.evaluation.report import write_report

            run = Path(run_dir) if run_dir else (Path(fake) if isinstance(fake, (str, Path)) and is_run_or_package(Path(fake)) else None)
            write_report(out / "report.html", summary, ctx, run_dir=run)
    return summary


def _small_n_advice(results: list[MetricResult]) -> list[str]:
    """Where FID and KID were both computed on fewer than a few thousand images: say which one to rank by."""
    names = {r.name: r for r in results}
    if "fid" in names and "kid" in names and min(names["fid"].n.values()) < 2000:
        return [f"FID at n={min(names['fid'].n.values())} is biased by ~1/n and comparable only at equal n; rank models by KID "
                "(unbiased) below a few thousand images, and read fid_inf for an n-free FID"]
    return []


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("breastgan")
    except Exception:  # an uninstalled source checkout has no metadata; the version is informative only
        return "unknown"


def load_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metrics ({exc})") from None
