"""Run-to-run comparison: several evaluation folders (``metrics.json``) as one table and one figure.

Two numbers are comparable only when they were computed the same way: FID depends on n, every
feature metric on the extractor, every metric on its input policy. :func:`compare_evaluations`
therefore checks, before writing anything, that the evaluations agree on

- n: the real and synthetic set sizes (``inputs.*.n``) and each metric's own ``n``;
- the extractor (``extractor``, the full description: network, weights hash, input policy);
- each metric's input policy (``input_policy``) and options that change its value (e.g. KID subset size);

and refuses with the differences listed, or (``force=True``) writes the comparison with every
difference as a warning in the table, the figure's caption and ``compare.json``.

Outputs (atomically): ``compare.csv`` (one row per evaluation, value / CI low / CI high per metric),
``compare.md`` (the same, readable), ``compare.png`` (one panel per metric, each evaluation's value with
its 95% CI) and ``compare.json`` (all of it, with the checks).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from breastgan.utils.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic


class IncomparableEvaluations(ValueError):
    """Evaluations that differ in n, extractor or input policy (pass force to compare them anyway)."""


def _load(path: Path) -> dict[str, Any]:
    f = path / "metrics.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (expected an output folder of breastgan evaluate)")
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{f}: field 'metrics' missing; expected the metrics.json written by breastgan evaluate")
    return data


def _label(path: Path, taken: set[str]) -> str:
    base = path.name if path.name != "metrics.json" else path.parent.name
    label, k = base, 2
    while label in taken:
        label, k = f"{base}#{k}", k + 1
    taken.add(label)
    return label


def comparability_problems(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Differences in n, extractor and input policy between the evaluations (empty: comparable)."""
    problems: list[str] = []
    labels = list(evals)

    def differ(what: str, values: dict[str, Any]) -> None:
        rendered = {k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}
        if len(set(rendered.values())) > 1:
            problems.append(f"{what} differs: " + "; ".join(f"{k}: {rendered[k]}" for k in labels if k in rendered))

    for role in ("real", "fake"):
        differ(f"n of the {role} set", {k: (e.get("inputs", {}).get(role) or {}).get("n") for k, e in evals.items()})
    differ("extractor", {k: e.get("extractor") for k, e in evals.items() if e.get("extractor") is not None})
    shared = set.intersection(*(set(e["metrics"]) for e in evals.values()))
    for name in sorted(shared):
        ms = {k: e["metrics"][name] for k, e in evals.items()}
        differ(f"{name}: n", {k: m.get("n") for k, m in ms.items()})
        differ(f"{name}: input policy", {k: m.get("input_policy") for k, m in ms.items()})
        for opt in ("subset_size", "k", "protocol"):
            vals = {k: (m.get("details") or {}).get(opt) for k, m in ms.items()}
            if any(v is not None for v in vals.values()):
                differ(f"{name}: {opt}", vals)
    return problems


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v)) else float("nan")


def comparison_figure(rows: list[dict[str, Any]], metrics: list[str], caption: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 0.5 * len(rows) * nrows + 1.4 * nrows), squeeze=False)
    ys = list(range(len(rows)))[::-1]
    for ax, name in zip(axes.flat, metrics):
        for y, row in zip(ys, rows):
            v, lo, hi = row[f"{name}"], row[f"{name}_ci_lo"], row[f"{name}_ci_hi"]
            if math.isnan(v):
                continue
            err = None if math.isnan(lo) else [[v - lo], [hi - v]]
            ax.errorbar([v], [y], xerr=err, fmt="o", ms=4, capsize=3)
        ax.set_yticks(ys)
        ax.set_yticklabels([r["evaluation"] for r in rows], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def compare_evaluations(paths: Sequence[str | Path], out_dir: str | Path, *, force: bool = False,
                        metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare evaluation folders; writes compare.{csv,md,png,json} under ``out_dir`` and returns the json content."""
    if len(paths) < 2:
        raise ValueError(f"--compare needs at least two evaluation folders, got {len(paths)}")
    taken: set[str] = set()
    evals: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        label = _label(path, taken)
        evals[label] = _load(path)
        sources[label] = str(path)
    problems = comparability_problems(evals)
    if problems and not force:
        raise IncomparableEvaluations("these evaluations are not comparable:\n  " + "\n  ".join(problems)
                                      + "\nre-run them with equal n, extractor and options, or pass --force to compare anyway (differences become warnings)")
    names = list(metrics) if metrics else [n for n in next(iter(evals.values()))["metrics"] if all(n in e["metrics"] for e in evals.values())]
    missing = [n for n in names if not all(n in e["metrics"] for e in evals.values())]
    if missing:
        raise ValueError(f"metrics not present in every evaluation: {', '.join(missing)}")
    if not names:
        raise ValueError("the evaluations share no metric")
    rows = []
    for label, e in evals.items():
        row: dict[str, Any] = {"evaluation": label, "path": sources[label],
                               "n_real": (e.get("inputs", {}).get("real") or {}).get("n"), "n_fake": (e.get("inputs", {}).get("fake") or {}).get("n")}
        for name in names:
            m = e["metrics"][name]
            ci = m.get("ci95") or [None, None]
            row[name], row[f"{name}_ci_lo"], row[f"{name}_ci_hi"] = _num(m.get("value")), _num(ci[0]), _num(ci[1])
        rows.append(row)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["evaluation", "path", "n_real", "n_fake"] + [c for n in names for c in (n, f"{n}_ci_lo", f"{n}_ci_hi")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    write_text_atomic(out / "compare.csv", buf.getvalue())

    def cell(r: dict[str, Any], n: str) -> str:
        v, lo, hi = r[n], r[f"{n}_ci_lo"], r[f"{n}_ci_hi"]
        if math.isnan(v):
            return "–"
        return f"{v:.4g} [{lo:.4g}, {hi:.4g}]" if not math.isnan(lo) else f"{v:.4g}"

    md = ["| evaluation | n real | n fake | " + " | ".join(names) + " |", "|" + " --- |" * (3 + len(names))]
    md += [f"| {r['evaluation']} | {r['n_real']} | {r['n_fake']} | " + " | ".join(cell(r, n) for n in names) + " |" for r in rows]
    if problems:
        md += ["", "**Warning: compared with --force although they differ:**", ""] + [f"- {p}" for p in problems]
    write_text_atomic(out / "compare.md", "\n".join(md) + "\n")
    caption = "value and 95% CI per evaluation" + (f" -- NOT COMPARABLE ({len(problems)} differences, see compare.md)" if problems else "")
    write_bytes_atomic(out / "compare.png", comparison_figure(rows, names, caption))
    summary = {"evaluations": sources, "metrics": names, "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                                                                   for r in rows],
               "comparable": not problems, "warnings": problems, "forced": bool(problems and force),
               "files": ["compare.csv", "compare.md", "compare.png", "compare.json"]}
    write_json_atomic(out / "compare.json", summary)
    return summary
