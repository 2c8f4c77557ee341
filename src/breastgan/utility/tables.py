"""Results tables of the utility experiment: per-run CSV, mean(std) over seeds as CSV, Markdown (the
study's Tables 1-2 layout) and a self-contained HTML section for reports."""

from __future__ import annotations

import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from breastgan.utility.metrics import METRIC_NAMES

METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "auroc": "AUROC", "auprc": "AUPRC"}


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (classifier, arm, fraction): mean and sample std (ddof=1) of each metric over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["classifier"], r["arm"], r["fraction"]), []).append(r)
    out = []
    for (clf, arm, frac), rows in groups.items():
        row: dict[str, Any] = {"classifier": clf, "arm": arm, "fraction": frac, "n_seeds": len(rows), "seeds": " ".join(str(r["seed"]) for r in rows)}
        for m in METRIC_NAMES:
            v = np.array([r[m] for r in rows], dtype=float)
            row[f"{m}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"{m}_std"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan")
        out.append(row)
    return out


def mean_std(mean: float, std: float) -> str:
    """0.942(.005): the study's format."""
    if math.isnan(mean):
        return "n/a"
    s = "" if math.isnan(std) else "(" + f"{std:.3f}".lstrip("0") + ")"
    return f"{mean:.3f}{s}"


LEADING_COLUMNS = ["classifier", "arm", "fraction", "seed", "n_seeds", "seeds", *METRIC_NAMES]


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV with identifying columns and metrics first, then the rest in first-seen order (rows reused from
    metrics.json and fresh rows give the same layout)."""
    if not rows:
        return ""
    seen: list[str] = []
    for r in rows:
        seen += [k for k in r if k not in seen]
    cols = [c for c in LEADING_COLUMNS if c in seen] + [c for c in seen if c not in LEADING_COLUMNS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _layout(agg: list[dict[str, Any]], arm_order: list[str], fractions: list[float], classifiers: list[str]):
    index = {(r["classifier"], r["arm"], r["fraction"]): r for r in agg}
    columns = [(f, m) for f in fractions for m in METRIC_NAMES]
    best: dict[tuple, float] = {}
    for clf in classifiers:
        for col in columns:
            vals = [index[(clf, a, col[0])][f"{col[1]}_mean"] for a in arm_order if (clf, a, col[0]) in index]
            vals = [v for v in vals if not math.isnan(v)]
            if vals:
                best[(clf, *col)] = max(vals)
    return index, columns, best


def markdown_table(agg: list[dict[str, Any]], arm_order: list[str], fractions: list[float], classifiers: list[str], receiving: str) -> str:
    """Rows: classifier x augmentation; columns: metric per training fraction; best mean per classifier and column in bold."""
    index, columns, best = _layout(agg, arm_order, fractions, classifiers)
    head = ["Classifier", "Augmentation"] + [f"{METRIC_TITLES[m]} ({fraction_label(f)} of {receiving})" for f, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(columns)]
    for clf in classifiers:
        for k, arm in enumerate(arm_order):
            cells = [clf if k == 0 else "", arm]
            for f, m in columns:
                r = index.get((clf, arm, f))
                if r is None:
                    cells.append("not run")
                    continue
                text = mean_std(r[f"{m}_mean"], r[f"{m}_std"])
                if (clf, f, m) in best and r[f"{m}_mean"] == best[(clf, f, m)]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def html_section(agg: list[dict[str, Any]], arm_order: list[str], fractions: list[float], classifiers: list[str], receiving: str,
                 title: str = "Downstream utility", notes: list[str] | None = None, figures: dict[str, str] | None = None) -> str:
    """A ``<section>`` for an HTML report (uses the report's CSS classes; no script, no external URL).

    ``figures``: caption -> base64 PNG (e.g. the images each arm adds), shown under the table.
    """
    index, columns, best = _layout(agg, arm_order, fractions, classifiers)
    e = html.escape
    out = [f"<section id=\"utility\"><h2>{e(title)}</h2>",
           f"<p>Test set of centre {e(receiving)}; mean(std) over seeds (sample std); bold: best mean per classifier and column.</p>",
           "<table><tr><th rowspan=2>Classifier</th><th rowspan=2>Augmentation</th>"]
    out += [f"<th colspan={len(METRIC_NAMES)}>{e(fraction_label(f))} of the {e(receiving)} training data</th>" for f in fractions]
    out.append("</tr><tr>" + "".join(f"<th>{METRIC_TITLES[m]}</th>" for _, m in columns) + "</tr>")
    for clf in classifiers:
        for k, arm in enumerate(arm_order):
            row = [f"<td rowspan={len(arm_order)}>{e(clf)}</td>" if k == 0 else "", f"<td>{e(arm)}</td>"]
            for f, m in columns:
                r = index.get((clf, arm, f))
                if r is None:
                    row.append("<td class=num>not run</td>")
                    continue
                text = e(mean_std(r[f"{m}_mean"], r[f"{m}_std"]))
                if (clf, f, m) in best and r[f"{m}_mean"] == best[(clf, f, m)]:
                    text = f"<b>{text}</b>"
                row.append(f"<td class=num>{text}</td>")
            out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</table>")
    for n in notes or []:
        out.append(f"<div class=warn>{e(n)}</div>")
    if figures:
        out.append("<div class=grid>")
        out += [f"<figure><img src=\"data:image/png;base64,{b64}\" alt=\"{e(cap)}\"><figcaption>{e(cap)}</figcaption></figure>" for cap, b64 in figures.items()]
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def standalone_html(section: str, title: str) -> str:
    from breastgan.evaluation.report import CSS

    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{section}</body></html>\n")


def insert_section(report: str | Path, section: str) -> Path:
    """Add (or replace) the utility section of an existing report.html, before ``</body>``."""
    from breastgan.utils.atomic import write_text_atomic

    path = Path(report)
    text = path.read_text()
    text = re.sub(r"<section id=\"utility\">.*?</section>\n?", "", text, flags=re.S)
    if "</body>" not in text:
        raise ValueError(f"{path}: not an HTML report (no </body>)")
    write_text_atomic(path, text.replace("</body>", section + "\n</body>", 1))
    return path
