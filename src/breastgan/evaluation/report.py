"""A self-contained ``report.html``: metric table with CIs and n, sample grids, nearest-neighbour pairs,
PCA/UMAP scatter plots, memorisation histograms and training curves.

Self-contained means one file that can be mailed or archived: every image is an inline base64 PNG,
the style sheet is inline, there is no script and no external URL. Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from breastgan.evaluation.context import EvaluationContext
from breastgan.utils.atomic import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem;width:100%}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem .8rem;margin:.4rem 0}
.grid{display:flex;gap:1.5rem;flex-wrap:wrap}.grid figure{margin:0}figcaption{font-size:.85rem;color:#555}
img{image-rendering:pixelated;max-width:100%}.pairs{display:flex;flex-wrap:wrap;gap:1rem}.pair{border:1px solid #ddd;padding:.3rem}
.flag{border-color:#d33;background:#fdecec}small{color:#666}code{font-size:.85em}
"""


def png_base64(array: np.ndarray) -> str:
    """(H, W) float [0, 1] or uint8 (H, W[, 3/4]) -> base64 PNG."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid(images: torch.Tensor, cols: int = 8, pad: int = 2) -> np.ndarray:
    """(N, 1, H, W) [0, 1] -> one (rows * H, cols * W) array with white gutters."""
    n, _, h, w = images.shape
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i, 0].float().clamp(0, 1).numpy()
    return out


def _figure_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def scatter_png(real: np.ndarray, fake: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(real[:, 0], real[:, 1] if real.shape[1] > 1 else np.zeros(len(real)), s=6, alpha=0.5, label=f"real (n={len(real)})", c="#1f77b4")
    ax.scatter(fake[:, 0], fake[:, 1] if fake.shape[1] > 1 else np.zeros(len(fake)), s=6, alpha=0.5, label=f"synthetic (n={len(fake)})", c="#d62728")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _figure_png(fig)


def histogram_png(distances: dict[str, dict[str, np.ndarray]]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(distances), figsize=(4.2 * len(distances), 3.2), squeeze=False)
    for ax, (space, d) in zip(axes[0], distances.items()):
        lo = float(min(d["fake"].min(), d["reference"].min()))
        hi = float(max(d["fake"].max(), d["reference"].max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
        ax.hist(d["reference"], bins=bins, alpha=0.55, density=True, label="reference (real -> train)")
        ax.hist(d["fake"], bins=bins, alpha=0.55, density=True, label="synthetic -> train")
        ax.set_title(f"nearest-training distance: {space}", fontsize=9)
        ax.legend(fontsize=7)
    return _figure_png(fig)


def read_training_log(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Numeric series by key from a run's JSONL log (lines of {"step": ..., key: value, ...}); bad lines skipped."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run still being written may end in a partial line
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        for k, v in rec.items():
            if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(float(rec["step"]))
            ys.append(float(v))
    return series


def curves_png(series: dict[str, tuple[list[float], list[float]]], max_plots: int = 16) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = sorted(series)[:max_plots]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        xs, ys = series[k]
        ax.plot(xs, ys, lw=1, marker="." if len(xs) < 30 else None)
        ax.set_title(k, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return _figure_png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _img(b64: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"{w}>'


def _preview(ctx: EvaluationContext, role: str, count: int) -> torch.Tensor:
    src = ctx.source(role)
    return next(iter(src.batches(min(count, src.n))))


def build_report(summary: dict[str, Any], ctx: EvaluationContext, run_dir: Path | None = None, grid_images: int = 32) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>breastgan evaluation</title><style>{CSS}</style></head><body>",
             "<h1>breastgan evaluation report</h1>",
             f"<p><small>created {e(str(summary.get('created')))} · breastgan {e(str(summary.get('breastgan_version')))} · torch {e(str(summary.get('torch')))}"
             f" · seed {summary.get('seed')} · bootstrap replicates {summary.get('n_boot')}</small></p>"]
    inputs = summary.get("inputs", {})
    parts.append("<h2>Inputs</h2><table><tr><th>role</th><th>kind</th><th>location</th><th>n</th></tr>")
    for role, d in inputs.items():
        parts.append(f"<tr><td>{e(role)}</td><td>{e(str(d.get('kind')))}</td><td><code>{e(str(d.get('location')))}</code></td><td class='num'>{d.get('n')}</td></tr>")
    parts.append("</table>")
    if summary.get("extractor"):
        parts.append(f"<p>Feature extractor: <code>{e(json.dumps(summary['extractor']))}</code></p>")
    for w in summary.get("warnings", []):
        parts.append(f"<div class='warn'>{e(w)}</div>")

    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th><th>better</th><th>input policy / protocol</th><th>time (s)</th></tr>")
    for name, m in summary.get("metrics", {}).items():
        ci = m.get("ci95")
        ci_s = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–"
        n_s = ", ".join(f"{k} {v}" for k, v in (m.get("n") or {}).items())
        better = {True: "lower", False: "higher", None: "–"}[m.get("lower_is_better")]
        det = m.get("details", {})
        proto = det.get("protocol") or det.get("ci_method") or ""
        pol = m.get("input_policy") or {}
        pol_s = "; ".join(f"{k}={v}" for k, v in pol.items() if k != "value_transform")
        parts.append(f"<tr><td>{e(name)}</td><td class='num'>{_fmt(m.get('value'))}</td><td class='num'>{ci_s}</td><td>{e(n_s)}</td>"
                     f"<td>{better}</td><td><small>{e(pol_s)}{'<br>' + e(str(proto)) if proto else ''}</small></td><td class='num'>{_fmt(m.get('seconds'))}</td></tr>")
    parts.append("</table>")
    if summary.get("skipped"):
        parts.append("<h3>Skipped</h3><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in summary["skipped"].items()) + "</ul>")

    lesion = summary.get("lesion_preservation")
    if lesion:
        parts.append("<h2>Lesion preservation</h2><p>Each input and its translation through the same lesion/healthy classifier "
                     f"(<code>{e(json.dumps(lesion.get('classifier'), default=str))}</code>), direction {e(str(lesion.get('direction')))}.</p>"
                     "<table><tr><th>images</th><th>class flips</th><th>lesion &rarr; healthy</th><th>healthy &rarr; lesion</th>"
                     "<th>mean |&Delta; P(lesion)|</th><th>mean P(lesion) before / after</th></tr>"
                     f"<tr><td class='num'>{lesion['n']}</td><td class='num'>{_fmt(lesion['flip_fraction'])}</td>"
                     f"<td class='num'>{lesion['flips_lesion_to_healthy']}</td><td class='num'>{lesion['flips_healthy_to_lesion']}</td>"
                     f"<td class='num'>{_fmt(lesion['mean_abs_change_p_lesion'])}</td>"
                     f"<td class='num'>{_fmt(lesion['mean_p_lesion_before'])} / {_fmt(lesion['mean_p_lesion_after'])}</td></tr></table>")

    parts.append("<h2>Samples</h2><div class='grid'>")
    for role, label in (("real", "real"), ("fake", "synthetic")):
        imgs = _preview(ctx, role, grid_images)
        parts.append(f"<figure>{_img(png_base64(image_grid(imgs)), f'{label} samples', 560)}<figcaption>{label}: first {imgs.shape[0]} images</figcaption></figure>")
    parts.append("</div>")

    pairs = ctx.artefacts.get("nearest_pairs")
    if pairs:
        parts.append("<h2>Nearest training images</h2><p>Synthetic images closest to a training image (pixel RMSE over flips); "
                     "red frames are flagged near-copies.</p><div class='pairs'>")
        for p in pairs:
            pair = np.concatenate([p["fake"][0].numpy(), np.ones((p["fake"].shape[-2], 2), np.float32), p["train"][0].numpy()], axis=1)
            cls = "pair flag" if p["flagged"] else "pair"
            parts.append(f"<div class='{cls}'>{_img(png_base64(pair), 'synthetic and nearest training image', 2 * min(160, pair.shape[0]))}"
                         f"<br><small>RMSE {p['pixel_rmse']:.4f} · SSIM {p['ssim']:.3f} · train #{p['train_index']} · flip {e(p['flip'])}</small></div>")
        parts.append("</div>")
    dist = ctx.artefacts.get("memorisation_distances")
    if dist:
        parts.append(f"<figure>{_img(histogram_png(dist), 'memorisation distance histograms')}"
                     "<figcaption>Nearest-training distances of synthetic images vs the reference (real images not used for training, "
                     "or leave-one-out).</figcaption></figure>")

    emb = ctx.artefacts.get("embeddings")
    if emb:
        parts.append("<h2>Feature embeddings</h2><div class='grid'>")
        for method, d in emb.items():
            parts.append(f"<figure>{_img(scatter_png(d['real'], d['fake'], method.upper()), f'{method} scatter plot')}"
                         f"<figcaption>{e(method.upper())} of extractor features, fitted on real + synthetic</figcaption></figure>")
        parts.append("</div>")

    if run_dir is not None:
        log = Path(run_dir) / "logs" / "metrics.jsonl"
        parts.append("<h2>Training curves</h2>")
        series = read_training_log(log) if log.is_file() else {}
        if series:
            parts.append(f"<figure>{_img(curves_png(series), 'training curves')}<figcaption>from <code>{e(str(log))}</code></figcaption></figure>")
        else:
            parts.append(f"<p>No numeric series in <code>{e(str(log))}</code>.</p>")

    timings = summary.get("timings_s", {})
    if timings:
        parts.append("<h2>Timings</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td class='num'>{_fmt(v)}</td></tr>" for k, v in timings.items()) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, summary: dict[str, Any], ctx: EvaluationContext, run_dir: Path | None = None) -> Path:
    path = Path(path)
    write_text_atomic(path, build_report(summary, ctx, run_dir))
    return path
