"""``breastgan sweep``: a grid of training runs (any config, any ``--set`` keys, seeds), each evaluated
with the evaluation suite, summarised as CSV, Markdown, an HTML section and a metric-over-epochs figure.

A sweep file (configs/dgan_wp_tl_study.yaml) names a base run configuration, common overrides, the
axes and the seeds::

    name: study
    base: dgan_wp_tl_busi_cpu.yaml          # relative to this file
    set: [train.epochs=2]
    axes:
      loss:                                  # a *bundle* axis: label -> overrides
        wgan-gp: {loss.name: wgan-gp, loss.gp_lambda: "${lambda}"}
        bce: {loss.name: nonsaturating, recipe.perceptual_weight: "${lambda}"}
      lambda: [0.5, 3, 5, 7, 10]             # no dot: a variable the bundles use
      train.batch_size: [2, 4]               # a dot: a config key set directly
    seeds: [0, 1]

A plain run configuration works too, with the grid on the command line
(``--grid loss.gp_lambda=1,10 --seeds 0,1``). Every combination is one run under
``<output>/runs/<id>``, trained by a worker process (``python -m breastgan.training.sweep job``)
with ``threads_per_worker`` threads; ``workers: auto`` runs as many at once as the cores allow.

Resumable: a run whose result file exists is skipped; a run directory with checkpoints is resumed
exactly (``breastgan train --resume``); a run directory without any checkpoint is restarted. The
sweep prints one line per run. Interrupting it (Ctrl-C / SIGTERM) stops the workers, each writing a
final checkpoint; killing it outright loses at most ``checkpoint_every`` steps per running run.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from breastgan.config import ConfigError, load_config, read_yaml_mapping
from breastgan.utils.atomic import write_json_atomic, write_text_atomic

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Columns of the seed's Tables 1-2 and the evaluation suite's result names (metrics.json) they come from
TABLE_COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("KID", ("kid",)),
    ("FID", ("fid",)),
    ("LPIPS real-fake", ("lpips_real_fake",)),
    ("LPIPS fake-fake", ("lpips_fake_fake",)),
    ("MS-SSIM real-fake", ("ms_ssim_real_fake",)),
    ("MS-SSIM fake-fake", ("ms_ssim_fake_fake",)),
    ("PCA-SWD", ("swd_pca",)),
    ("UMAP-SWD", ("swd_umap",)),
]


# metrics.json names that fill the seed's columns; any other metric gets a column of its own
SEED_METRIC_KEYS = frozenset(k for _, keys in TABLE_COLUMNS for k in keys)
# the results table's own columns; axis names may not take them
RESERVED_COLUMNS = frozenset({"run", "seed", "status", "steps", "epochs", "train_s", "KID std", *(c for c, _ in TABLE_COLUMNS)})


class SweepEval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    real: dict[str, Any] | None = Field(None, description="real images: a dataset spec {dataset: ..., <options>}; default: the run's data.source")
    train: dict[str, Any] | None = Field(None, description="the runs' training images, a dataset spec: the memorisation metric's "
                                                       "nearest-neighbour search set (default: `real`)")
    heldout: dict[str, Any] | None = Field(None, description="real images no run trained on, a dataset spec: the memorisation metric's "
                                                         "reference (default: leave-one-out within `train`)")
    n: int | None = Field(200, ge=2, description="images per set (real: a seeded subset; fake: samples)")
    metrics: list[str] = Field(default_factory=lambda: ["kid", "fid", "lpips", "ms-ssim", "embedding-swd"])
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-metric options, as breastgan evaluate")
    extractor: Any = "inception-fid"
    domain_extractors: dict[str, Any] = Field(default_factory=dict,
                                              description="label -> extractor spec: KID also in these feature spaces (one the discriminator did not use)")
    domain_kid: dict[str, Any] = Field(default_factory=dict, description="KID options for the domain extractors")
    n_boot: int = Field(0, ge=0)
    seed: int = 0


class ExtraRun(BaseModel):
    """A run outside the grid, evaluated and tabulated with it (e.g. another recipe at the same budget)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    base: str | None = Field(None, description="its own run configuration (default: the sweep's base)")
    set: list[str] = Field(default_factory=list, description="its overrides (the sweep's common ones are NOT applied: they may not fit another recipe)")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.\-]+$")
    base: str = Field(description="the run configuration every run starts from (path; relative paths are tried next to the sweep file, then from the working directory)")
    set: list[str] = Field(default_factory=list, description="overrides applied to every run")
    axes: dict[str, list[Any] | dict[str, dict[str, Any]]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    output: str | None = Field(None, description="default runs/sweeps/<name>")
    workers: int | Literal["auto"] = "auto"
    threads_per_worker: int = Field(1, ge=1, le=256)
    extra_runs: list[ExtraRun] = Field(default_factory=list, description="runs beside the grid (each x seeds), same evaluation and table")
    evaluate: SweepEval = Field(default_factory=SweepEval)
    curves: list[str] = Field(default_factory=lambda: ["kid/kid", "fid/fid"], description="metrics.jsonl keys plotted over epochs (train.eval results)")
    title: str | None = None

    @model_validator(mode="after")
    def _axes(self) -> "SweepConfig":
        variables = {k for k, v in self.axes.items() if "." not in k and not isinstance(v, dict)}
        used: set[str] = set()
        for name, values in self.axes.items():
            if name in RESERVED_COLUMNS:
                # the results table has one column per axis beside these: a clash would overwrite the run id or the status
                raise ValueError(f"axes.{name}: {name!r} is a column of the results table already "
                                 f"({', '.join(sorted(RESERVED_COLUMNS))}); give the axis another name")
            if isinstance(values, dict):
                if not values:
                    raise ValueError(f"axes.{name}: a bundle axis needs at least one label")
                for label, sets in values.items():
                    if not isinstance(sets, dict) or not sets:
                        raise ValueError(f"axes.{name}.{label}: expected a mapping of config keys to values")
                    for key, v in sets.items():
                        if "." not in key:
                            raise ValueError(f"axes.{name}.{label}: {key!r} is not a dotted config key (e.g. loss.gp_lambda)")
                        for ref in VAR.findall(str(v)):
                            if ref not in variables:
                                raise ValueError(f"axes.{name}.{label}.{key}: ${{{ref}}} names no variable axis (variables: {sorted(variables) or 'none'})")
                            used.add(ref)
            elif not values:
                raise ValueError(f"axes.{name}: no values")
        unused = variables - used
        if unused:
            raise ValueError(f"axes {sorted(unused)}: a name without a dot is a variable, but no bundle uses it as ${{name}}; "
                             "write the full config key (e.g. loss.gp_lambda) to set a key directly")
        return self


@dataclass
class RunSpec:
    id: str
    labels: dict[str, Any]  # axis -> label/value, plus seed
    overrides: list[str]
    base: str | None = None  # None: the sweep's base config


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


# -- loading and expanding ----------------------------------------------------------------------------------------
def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``--grid key=v1,v2`` -> {key: [v1, v2]} (values parsed as YAML scalars)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2 (e.g. loss.gp_lambda=1,10)")
        key, raw = item.split("=", 1)
        out[key.strip()] = [yaml.safe_load(v) for v in raw.split(",") if v.strip() != ""]
        if not out[key.strip()]:
            raise ConfigError(f"--grid {item!r}: no values")
    return out


def load_sweep(path: str | Path, *, grid: list[str] | None = None, seeds: list[int] | None = None, set_: list[str] | None = None,
               output: str | Path | None = None, workers: int | None = None) -> tuple[SweepConfig, Path]:
    """A sweep file, or a plain run config turned into a sweep; returns (config, the directory relative paths start from)."""
    path = Path(path)
    tree = read_yaml_mapping(path, "sweep config")
    if "base" not in tree:  # a run config: sweep over --grid keys
        tree = {"name": str(tree.get("name", path.stem)), "base": str(path.resolve())}
    tree.setdefault("axes", {})
    tree["axes"] = {**tree["axes"], **parse_grid(grid or [])}
    if seeds:
        tree["seeds"] = list(seeds)
    if set_:
        tree["set"] = [*tree.get("set", []), *set_]
    if output is not None:
        tree["output"] = str(output)
    if workers is not None:
        tree["workers"] = workers
    try:
        cfg = SweepConfig.model_validate(tree)
    except ValidationError as exc:
        lines = [f"invalid sweep configuration in {path}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc or '<root>'}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
    return cfg, path.resolve().parent


def resolve_base(cfg: SweepConfig, here: Path) -> Path:
    p = Path(cfg.base)
    for cand in ([p] if p.is_absolute() else [here / p, Path.cwd() / p]):
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(f"sweep base config {cfg.base!r} not found (tried next to the sweep file, {here}, and the working directory)")


def _slug(v: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", str(v)).strip("-") or "x"


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else ("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v))


def expand(cfg: SweepConfig) -> list[RunSpec]:
    """Every combination of the axes x seeds, in axis order (seeds innermost)."""
    names = list(cfg.axes)
    choices = [list(v.items()) if isinstance(v, dict) else [(x, x) for x in v] for v in cfg.axes.values()]
    runs: list[RunSpec] = []
    for combo in itertools.product(*choices):
        values = {n: c[0] for n, c in zip(names, combo)}  # label (bundle) or value
        overrides = list(cfg.set)
        for n, (label, payload) in zip(names, combo):
            if isinstance(cfg.axes[n], dict):
                for key, v in payload.items():
                    if isinstance(v, str) and VAR.search(v):
                        whole = VAR.fullmatch(v)
                        # "${lambda}" keeps the variable's type; "lr=${lambda}" is text
                        v = values[whole.group(1)] if whole else VAR.sub(lambda m: str(values[m.group(1)]), v)
                    overrides.append(f"{key}={_fmt_value(v)}")
            elif "." in n:
                overrides.append(f"{n}={_fmt_value(payload)}")
        for seed in cfg.seeds:
            labels = {**values, "seed": seed}
            rid = "_".join(f"{_slug(k)}-{_slug(v)}" for k, v in labels.items())
            runs.append(RunSpec(rid, labels, [*overrides, f"train.seed={seed}"]))
    for extra in cfg.extra_runs:
        for seed in cfg.seeds:
            labels = {**{n: None for n in names}, "seed": seed}
            runs.append(RunSpec(f"{extra.name}_seed-{seed}", labels, [*extra.set, f"train.seed={seed}"], extra.base))
    ids = [r.id for r in runs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"sweep: axis values give the same run id twice ({dup[:3]}); use distinct labels")
    return runs


def default_workers(cfg: SweepConfig, n_runs: int) -> int:
    if cfg.workers != "auto":
        return max(1, min(int(cfg.workers), n_runs))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(n_runs, cores // cfg.threads_per_worker))


# -- one run (in a worker process) ---------------------------------------------------------------------------------
def run_job(job: dict[str, Any]) -> int:
    """Train (or resume) one run, evaluate it, write its result file; the process exit code."""
    import torch

    from breastgan.training.trainer import train

    torch.set_num_threads(int(job["threads"]))
    run_dir, result_path = Path(job["run_dir"]), Path(job["result"])
    trained = run_dir / "sweep_trained.json"
    t0 = time.perf_counter()
    resumed = False
    if not trained.is_file():
        has_ckpt = (run_dir / "config.yaml").is_file() and any((run_dir / "checkpoints").glob("step_*"))
        if has_ckpt:
            resumed = True
            res = train(resume=run_dir)
        else:
            if run_dir.exists():
                # killed before its first checkpoint: nothing to continue from, start it again
                shutil.rmtree(run_dir)
            res = train(job["base"], overrides=job["overrides"], run_dir=run_dir)
        if res.stop_signal:
            return 128 + res.stop_signal
        write_json_atomic(trained, {"step": res.step, "epoch": res.epoch, "train_seconds": round(time.perf_counter() - t0, 2), "resumed": resumed})
    info = json.loads(trained.read_text())
    metrics: dict[str, Any] = {}
    ev = SweepEval.model_validate(job["evaluate"])
    if ev.enabled:
        metrics = evaluate_run(run_dir, job["real"], ev, Path(job["eval_dir"]))
    write_json_atomic(result_path, {"id": job["id"], "labels": job["labels"], "run_dir": str(run_dir), "overrides": job["overrides"],
                                    **info, "metrics": metrics})
    return 0


def evaluate_run(run_dir: Path, real_spec: dict[str, Any], ev: SweepEval, out_dir: Path) -> dict[str, Any]:
    """The evaluation suite on one run; headline values by result name, plus KID in each domain feature space."""
    from breastgan.data.base import build_dataset
    from breastgan.evaluation import evaluate

    def dataset(spec: dict[str, Any] | None):
        if spec is None:
            return None
        spec = dict(spec)
        return build_dataset(spec.pop("dataset"), spec)

    real = dataset(real_spec)
    summary = evaluate(real, run_dir, n=ev.n, metrics=ev.metrics, options=ev.options, extractor=ev.extractor, seed=ev.seed,
                       n_boot=ev.n_boot, out_dir=out_dir, report=True, run_dir=run_dir, train=dataset(ev.train), heldout=dataset(ev.heldout))
    values = {k: v.get("value") for k, v in summary["metrics"].items()}
    ci = {k: v.get("ci95") for k, v in summary["metrics"].items()}
    details = {k: v.get("details", {}) for k, v in summary["metrics"].items()}
    for label, extractor in ev.domain_extractors.items():
        s = evaluate(real, run_dir, n=ev.n, metrics=["kid"], options={"kid": ev.domain_kid} if ev.domain_kid else None,
                     extractor=extractor, seed=ev.seed, n_boot=ev.n_boot, out_dir=out_dir / f"domain_{_slug(label)}", report=False)
        for k, v in s["metrics"].items():
            values[f"{k}@{label}"] = v.get("value")
            details[f"{k}@{label}"] = v.get("details", {})
    return {"values": values, "ci95": ci, "details": details, "skipped": summary.get("skipped", {}),
            "n": {role: d.get("n") for role, d in summary.get("inputs", {}).items() if isinstance(d, dict)}}


# -- the sweep (main process) ----------------------------------------------------------------------------------------
def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON trees (the first few are enough for an error)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(whole)"]


def check_not_stale(out: Path, runs: list[RunSpec], resolved: dict[str, dict[str, Any]], evaluate: dict[str, Any],
                    real: dict[str, Any]) -> None:
    """Refuse to skip or resume a run that was started under a different configuration.

    Results are keyed by run id (the axis labels), so an edited sweep file or base config would otherwise
    reuse results computed under the old one and mix two protocols in one table. A job file written
    before job files carried the resolved configuration is compared by base, overrides and evaluation.
    """
    stale: list[str] = []
    for r in runs:
        job_path = out / "jobs" / f"{r.id}.json"
        started = (out / "results" / f"{r.id}.json").is_file() or (out / "runs" / r.id / "config.yaml").is_file()
        if not started or not job_path.is_file():
            continue
        try:
            job = json.loads(job_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"sweep: {job_path}: unreadable job record ({exc}); delete runs/{r.id}, results/{r.id}.json "
                              f"and this file under {out} to run it again") from None
        if "config" in job:
            diff = _differences(job["config"], resolved[r.id])
        else:
            diff = [k for k, v in (("overrides", r.overrides), ("base", job.get("base"))) if job.get(k) != v]
        diff += [f"evaluate.{k}" for k in _differences(job.get("evaluate"), evaluate)]
        diff += [f"evaluate.real.{k}" for k in _differences(job.get("real"), real)]
        if diff:
            shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
            stale.append(f"{r.id} (changed: {shown})")
    if stale:
        raise ConfigError(f"sweep: {len(stale)} run(s) under {out} were started with a different configuration than this sweep "
                          f"file now gives: {'; '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}. Skipping or resuming them "
                          f"would mix two protocols in one table: set a new `output`, or delete those runs' runs/<id>, "
                          f"results/<id>.json and jobs/<id>.json to run them again")


def run_sweep(cfg: SweepConfig, here: Path, *, echo: Callable[[str], None] = print, python: str = sys.executable) -> SweepResult:
    base = resolve_base(cfg, here)
    base_cfg = load_config(base, list(cfg.set))  # fail on a bad base or common override before any run starts
    runs = expand(cfg)
    bases = {r.id: (base if r.base is None else resolve_base(cfg.model_copy(update={"base": r.base}), here)) for r in runs}
    resolved = {r.id: load_config(bases[r.id], r.overrides).model_dump(mode="json") for r in runs}  # fails on a bad axis value now
    out = Path(cfg.output or f"runs/sweeps/{cfg.name}")
    for sub in ("runs", "results", "eval", "logs", "jobs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.yaml", yaml.safe_dump({**cfg.model_dump(mode="json"), "base": str(base)}, sort_keys=False))
    real = cfg.evaluate.real or {"dataset": base_cfg.data.source.component, **base_cfg.data.source.args}
    evaluate_spec = cfg.evaluate.model_dump(mode="json")
    check_not_stale(out, runs, resolved, evaluate_spec, real)
    n_workers = default_workers(cfg, len(runs))
    extra = f" + {len(cfg.extra_runs)} extra" if cfg.extra_runs else ""
    echo(f"sweep {cfg.name}: {len(runs)} runs ({' x '.join(f'{k}[{len(v)}]' for k, v in cfg.axes.items()) or 'no axes'} x seeds {cfg.seeds}{extra}), "
         f"{n_workers} worker(s) x {cfg.threads_per_worker} thread(s) -> {out}")

    pending: list[tuple[int, RunSpec]] = []
    for i, r in enumerate(runs, 1):
        if (out / "results" / f"{r.id}.json").is_file():
            echo(f"[{i:>{len(str(len(runs)))}}/{len(runs)}] {r.id}: skipped (finished earlier)")
        else:
            pending.append((i, r))

    running: dict[int, tuple[subprocess.Popen, RunSpec, float, Any, bool]] = {}
    failed: list[str] = []
    stop = {"signal": 0}

    def _forward(signum, frame):  # pass the stop to the workers: each writes a final checkpoint
        stop["signal"] = signum
        for p, *_ in running.values():
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, _forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        queue = list(pending)
        while queue or running:
            while queue and len(running) < n_workers and not stop["signal"]:
                i, r = queue.pop(0)
                job = {"id": r.id, "labels": r.labels, "base": str(bases[r.id]), "overrides": r.overrides, "config": resolved[r.id],
                       "threads": cfg.threads_per_worker,
                       "run_dir": str(out / "runs" / r.id), "result": str(out / "results" / f"{r.id}.json"),
                       "eval_dir": str(out / "eval" / r.id), "evaluate": evaluate_spec, "real": real}
                job_path = out / "jobs" / f"{r.id}.json"
                write_json_atomic(job_path, job)
                resuming = (out / "runs" / r.id / "config.yaml").is_file()
                log = open(out / "logs" / f"{r.id}.log", "a")
                # one numba cache for all workers: UMAP's JIT compiles once per sweep, not once per run
                env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads_per_worker), "MKL_NUM_THREADS": str(cfg.threads_per_worker),
                       "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str((out / ".numba_cache").resolve()))}
                proc = subprocess.Popen([python, "-m", "breastgan.training.sweep", "job", str(job_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[i] = (proc, r, time.perf_counter(), log, resuming)
            if stop["signal"] and queue:
                queue.clear()
            for i in list(running):
                proc, r, t0, log, resuming = running[i]
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[i]
                tag = f"[{i:>{len(str(len(runs)))}}/{len(runs)}] {r.id}:"
                if rc == 0:
                    res = json.loads((out / "results" / f"{r.id}.json").read_text())
                    echo(f"{tag} {'resumed and ' if resuming else ''}done in {time.perf_counter() - t0:.0f} s (step {res['step']}, epoch {res['epoch']})"
                         f"{_headline(res.get('metrics', {}))}")
                elif rc >= 128:
                    echo(f"{tag} stopped by signal {rc - 128}; re-run the sweep to resume it")
                    failed.append(r.id)
                else:
                    echo(f"{tag} FAILED (exit {rc}); see {out / 'logs' / (r.id + '.log')}")
                    failed.append(r.id)
            if running:
                time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    result = summarise(cfg, out, runs)
    if failed:
        echo(f"sweep {cfg.name}: {len(failed)} run(s) unfinished: {', '.join(failed)}")
    if stop["signal"]:
        raise SystemExit(128 + stop["signal"])
    return result


def _headline(metrics: dict[str, Any]) -> str:
    vals = metrics.get("values", {})
    shown = [(k, vals[k]) for k in ("kid", "fid") if vals.get(k) is not None]
    shown += [(k, v) for k, v in vals.items() if k.startswith("kid@") and v is not None]
    return "".join(f"  {k.upper() if '@' not in k else 'KID@' + k.split('@', 1)[1]} {v:.4g}" for k, v in shown)


# -- tables, figure, HTML --------------------------------------------------------------------------------------------
def _lookup(values: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if values.get(k) is not None:
            return float(values[k])
    return None


def table_rows(cfg: SweepConfig, out: Path, runs: list[RunSpec]) -> tuple[list[str], list[dict[str, Any]]]:
    axis_cols = [*cfg.axes, "seed"]
    rows: list[dict[str, Any]] = []
    extra_cols: list[str] = []
    for r in runs:
        path = out / "results" / f"{r.id}.json"
        row: dict[str, Any] = {"run": r.id, **{k: r.labels[k] for k in axis_cols}}
        if not path.is_file():
            row["status"] = "unfinished"
            rows.append(row)
            continue
        res = json.loads(path.read_text())
        vals = res.get("metrics", {}).get("values", {})
        row.update({"status": "done", "steps": res.get("step"), "epochs": res.get("epoch"), "train_s": res.get("train_seconds")})
        for col, keys in TABLE_COLUMNS:
            row[col] = _lookup(vals, keys)
        # the seed reports KID as mean +- std over subsets
        row["KID std"] = res.get("metrics", {}).get("details", {}).get("kid", {}).get("std_over_subsets")
        for k, v in vals.items():
            if "@" in k:
                col = f"KID ({k.split('@', 1)[1]})" if k.startswith("kid@") else k
            elif k not in SEED_METRIC_KEYS:
                col = k  # any other metric the sweep asked for (e.g. memorisation's nn_ratio_pixel): its own column, never dropped
            else:
                continue
            row[col] = v
            if col not in extra_cols:
                extra_cols.append(col)
        rows.append(row)
    metric_cols = [c for c, _ in TABLE_COLUMNS]
    metric_cols.insert(1, "KID std")
    columns = ["run", *axis_cols, "status", "steps", "epochs", "train_s", *metric_cols, *extra_cols]
    return columns, rows


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _images_per_step(run_dir: Path) -> float | None:
    """Training images one generator step consumes, as a fraction of the data set (epochs per step), from run.json and config.yaml."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        sessions = run.get("sessions") or [{}]
        batch = sessions[-1].get("effective_batch") or run.get("effective_batch")
        size = run["dataset"]["size"]
        return float(batch) * float(cfg["train"]["n_critic"]) / float(size)
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError, yaml.YAMLError):
        return None  # an old or partial run: fall back to the logged whole epochs


def read_curves(out: Path, runs: list[RunSpec], keys: list[str]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """key -> run id -> (epochs, values) from each run's logs/metrics.jsonl.

    The x value is the fractional epoch, step x n_critic x effective batch / data-set size (the loop logs
    completed epochs only, which is 0 for a whole run shorter than one epoch); else the logged epoch.
    """
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {k: {} for k in keys}
    for r in runs:
        run_dir = out / "runs" / r.id
        log = run_dir / "logs" / "metrics.jsonl"
        if not log.is_file():
            continue
        per_step = _images_per_step(run_dir)
        epoch_at: dict[int, float] = {}
        records = []
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a killed run may end in a partial line
            if isinstance(rec, dict) and "step" in rec:
                records.append(rec)
                if isinstance(rec.get("epoch"), (int, float)):
                    epoch_at[int(rec["step"])] = float(rec["epoch"])
        logged = sorted(epoch_at)
        for k in keys:
            # a resumed run logs some steps twice: keep the last value per step
            by_step = {int(rec["step"]): float(rec[k]) for rec in records if isinstance(rec.get(k), (int, float))}
            if not by_step:
                continue
            xs, ys = [], []
            for step in sorted(by_step):
                if per_step is not None:
                    xs.append(step * per_step)
                else:
                    near = min(logged, key=lambda s: abs(s - step)) if logged else None
                    xs.append(epoch_at[near] if near is not None else float(step))
                ys.append(by_step[step])
            curves[k][r.id] = (xs, ys)
    return curves


def curves_figure(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path) -> Path | None:
    panels = [k for k, v in curves.items() if v]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, k in zip(axes[0], panels):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 20 distinct colours: the default 10 repeat in a 2 x 5 + 1 study
        for rid, (xs, ys) in sorted(curves[k].items()):
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, lw=1.2, label=rid)
        ax.set_xlabel("epoch")
        ax.set_ylabel(k.split("/")[0].upper())
        ax.set_title(f"{k} over epochs", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def curve_rows(curves: dict[str, dict[str, tuple[list[float], list[float]]]]) -> list[dict[str, Any]]:
    """The figure's points as long-format rows (metric, run, epoch, value): curves.csv, and the source of curves.md."""
    return [{"metric": k, "run": rid, "epoch": round(x, 4), "value": y}
            for k, per_run in curves.items() for rid, (xs, ys) in sorted(per_run.items()) for x, y in zip(xs, ys)]


def curves_markdown(curves: dict[str, dict[str, tuple[list[float], list[float]]]]) -> str:
    """One table per metric: a row per run, a cell per evaluation, "value @ epoch" (runs are evaluated at different epochs)."""
    parts: list[str] = []
    for k, per_run in curves.items():
        if not per_run:
            continue
        width = max(len(xs) for xs, _ in per_run.values())
        columns = ["run", *[f"eval {i + 1}" for i in range(width)]]
        parts.append(f"### {k}\n")
        parts.append("| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n")
        for rid, (xs, ys) in sorted(per_run.items()):
            cells = [f"{_cell(y)} @ {x:.3g}" for x, y in zip(xs, ys)] + ["" for _ in range(width - len(xs))]
            parts.append("| " + " | ".join([rid, *cells]) + " |\n")
        parts.append("\n")
    return "".join(parts) or "no curve values: the runs logged none of the sweep's `curves` keys\n"


def html_section(cfg: SweepConfig, columns: list[str], rows: list[dict[str, Any]], figure: Path | None, grids: dict[str, Path],
                 curve_points: list[dict[str, Any]] | None = None) -> str:
    import base64
    import html

    e = html.escape
    parts = [f"<section class='breastgan-sweep' id='sweep-{e(cfg.name)}'><h2>{e(cfg.title or 'Sweep ' + cfg.name)}</h2>",
             f"<p>{len(rows)} runs; axes: {e(', '.join(cfg.axes) or 'none')}; seeds {e(str(cfg.seeds))}. "
             "KID is the primary metric (unbiased at small n); columns after the seed's are KID in feature spaces the discriminator did not use.</p>",
             "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows]
    parts.append("</table>")
    if figure is not None:
        b64 = base64.b64encode(figure.read_bytes()).decode()
        parts.append(f"<figure><img alt='metrics over epochs' src='data:image/png;base64,{b64}'><figcaption>in-training metrics over epochs</figcaption></figure>")
    if curve_points:
        parts.append("<details><summary>curve values (also curves.csv)</summary><table><tr><th>metric</th><th>run</th><th>epoch</th><th>value</th></tr>")
        parts += [f"<tr><td>{e(p['metric'])}</td><td>{e(p['run'])}</td><td>{p['epoch']:.4g}</td><td>{e(_cell(p['value']))}</td></tr>" for p in curve_points]
        parts.append("</table></details>")
    for rid, grid in grids.items():
        b64 = base64.b64encode(grid.read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(rid)} samples' width='384' src='data:image/png;base64,{b64}'><figcaption>{e(rid)}: last sample grid</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV of ``rows`` in ``columns`` order; a missing or None value is an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def summarise(cfg: SweepConfig, out: Path, runs: list[RunSpec]) -> SweepResult:
    """results.csv, results.md, curves.png/.csv/.md, report_section.html (+ report.html wrapping it) from the result files."""
    columns, rows = table_rows(cfg, out, runs)
    write_text_atomic(out / "results.csv", csv_text(columns, rows))
    write_text_atomic(out / "results.md", markdown_table(columns, rows))
    curves = read_curves(out, runs, cfg.curves)
    figure = curves_figure(curves, out / "curves.png")
    points = curve_rows(curves)
    write_text_atomic(out / "curves.csv", csv_text(["metric", "run", "epoch", "value"], points))
    write_text_atomic(out / "curves.md", curves_markdown(curves))
    grids = {}
    for r in runs:
        samples = sorted((out / "runs" / r.id / "samples").glob("step_*.png"))
        if samples:
            grids[r.id] = samples[-1]
    section = html_section(cfg, columns, rows, figure, grids, points)
    write_text_atomic(out / "report_section.html", section)
    write_text_atomic(out / "report.html", "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>breastgan sweep</title>"
                      "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
                      "font-size:12px}</style></head><body>" + section + "</body></html>")
    files = {"csv": out / "results.csv", "markdown": out / "results.md", "html": out / "report.html", "section": out / "report_section.html",
             "curves_csv": out / "curves.csv", "curves_markdown": out / "curves.md"}
    if figure is not None:
        files["figure"] = figure
    return SweepResult(out, rows, files)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "job":
        print("usage: python -m breastgan.training.sweep job JOB.json (started by `breastgan sweep`)", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    return run_job(job)


if __name__ == "__main__":
    raise SystemExit(main())
