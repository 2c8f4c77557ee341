"""``run_experiment(config)``: does synthetic data help a classifier? (model-sharing study, Tables 1-2)

For each training fraction of the receiving centre, each augmentation arm, each classifier and
each seed: compose the training set, train with validation-AUPRC checkpoint selection, evaluate
on the receiving centre's test split. Every run keeps ``log.jsonl``, ``best.safetensors``,
``metrics.json`` and ``predictions.csv``; the experiment writes ``results.csv`` (one row per run),
``table.csv`` / ``table.md`` (mean(std) over seeds), ``utility_section.html`` and ``report.html``.
A run whose ``metrics.json`` exists with the same fingerprint is reused, so an interrupted
experiment continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from breastgan.utility.arms import ArmSpec, NoneArm, RealArm, SyntheticArm, compose, sample_synthetic
from breastgan.utility.classifiers import CLASSIFIERS, count_parameters
from breastgan.utility.data import CentreSpec, Pool, TrainingSet, load_centre, pool_to_set, synthetic_to_set, training_fraction
from breastgan.utility.fit import FitConfig, fit, predict
from breastgan.utility.metrics import METRIC_NAMES, binary_metrics, probabilities
from breastgan.utility.tables import aggregate, csv_text, fraction_label, html_section, markdown_table, standalone_html
from breastgan.utils.atomic import write_json_atomic, write_text_atomic


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifierSpec(_Strict):
    name: str = Field(description="a registered classifier: cnn, swin_t, ...")
    label: str | None = Field(None, description="name in the tables (default: the registry name)")
    args: dict[str, Any] = Field(default_factory=dict)
    fit: FitConfig = Field(default_factory=FitConfig)

    @property
    def title(self) -> str:
        return self.label or self.name


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    output_dir: Path = Path("runs/utility")
    classes: list[str] = Field(min_length=2, max_length=2, description="[negative, positive]; metrics score the positive class")
    add_label: str | None = Field(None, description="class of the added images (default: the positive class)")
    image_size: int = Field(128, ge=16, description="every image, real or synthetic, is area-resampled to this side")
    centres: dict[str, CentreSpec]
    receiving: str
    arms: list[ArmSpec] = Field(min_length=1)
    n_added: int | Literal["to_balance"] = Field(1200, description="synthetic images per arm, or 'to_balance' (with balance: false) to equalise the classes")
    balance: bool = Field(True, description="match every added image with a real image of the other class from the receiving centre")
    on_shortage: Literal["error", "allow_imbalance"] = "error"
    fractions: list[float] = Field(default_factory=lambda: [1.0, 0.5], min_length=1)
    fraction_seed: int = Field(0, description="seed of the patient-level reduced training sets and of the balancing order")
    classifiers: list[ClassifierSpec] = Field(default_factory=lambda: [ClassifierSpec(name="cnn", label="CNN")], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    sample_seed: int = Field(0, description="seed of the synthetic images (sampled once per arm) and of real-arm subsets")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads")

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        if len(set(self.classes)) != 2:
            raise ValueError(f"classes must be two different names, got {self.classes}")
        if self.receiving not in self.centres:
            raise ValueError(f"receiving: {self.receiving!r} is not a centre; centres are {sorted(self.centres)}")
        if self.add_label is not None and self.add_label not in self.classes:
            raise ValueError(f"add_label {self.add_label!r} is not one of classes {self.classes}")
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        for a in self.arms:
            if isinstance(a, RealArm):
                if a.centre not in self.centres:
                    raise ValueError(f"arm {a.name!r}: centre {a.centre!r} is not defined; centres are {sorted(self.centres)}")
                if a.centre == self.receiving:
                    raise ValueError(f"arm {a.name!r}: real images must come from another centre than the receiving one")
        for f in self.fractions:
            if not 0.0 < f <= 1.0:
                raise ValueError(f"fractions must lie in (0, 1], got {f}")
        if self.n_added == "to_balance" and self.balance:
            raise ValueError("n_added: to_balance adds images to equalise the classes; it needs balance: false")
        for c in self.classifiers:
            CLASSIFIERS.entry(c.name).validate_args(c.args, where=f"classifiers.{c.name}.args")
        titles = [c.title for c in self.classifiers]
        if len(set(titles)) != len(titles):
            raise ValueError(f"classifier labels must be unique, got {titles}")
        return self

    @property
    def add_index(self) -> int:
        return self.classes.index(self.add_label or self.classes[1])

    @property
    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_experiment_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """A YAML path or dict -> validated config; ``overrides``: ``key.sub=value`` (YAML values); $VARS expanded."""
    from breastgan.config import apply_overrides, expand_env, read_yaml_mapping

    if isinstance(source, (str, Path)):
        raw, where = read_yaml_mapping(source, "experiment config"), str(source)
    else:
        raw, where = source, "config"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    raw = expand_env(apply_overrides(raw, overrides or []))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            hint = " (unknown key)" if e["type"] == "extra_forbidden" else ""
            lines.append(f"{loc}: {e['msg']}{hint}")
        raise ValueError(f"{where}: invalid utility experiment config:\n" + "\n".join(lines)) from None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_") or "arm"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ExperimentResult:
    directory: Path
    results: list[dict[str, Any]]
    table: list[dict[str, Any]]
    markdown: str


def _select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _added_sets(cfg: ExperimentConfig, arm, n: int, centres: dict[str, Pool], cache: dict) -> list[TrainingSet]:
    add = cfg.add_index
    if isinstance(arm, NoneArm):
        return []
    if isinstance(arm, SyntheticArm):
        n = arm.n or n
        key = (arm.name, n)
        if key not in cache:
            cache[key] = [synthetic_to_set(images, add, cfg.image_size, tag) for tag, images in sample_synthetic(arm, n, cfg.sample_seed)]
        return cache[key]
    pool = centres[arm.centre]
    idx = [i for i, (lab, sp) in enumerate(zip(pool.labels, pool.splits)) if int(lab) == add and (arm.splits is None or sp in arm.splits)]
    if not idx:
        raise ValueError(f"arm {arm.name!r}: centre {arm.centre} has no {cfg.classes[add]} images in splits {arm.splits or 'all'}")
    if arm.n is not None:
        if arm.n > len(idx):
            raise ValueError(f"arm {arm.name!r}: asks for {arm.n} images but centre {arm.centre} has {len(idx)}")
        g = torch.Generator().manual_seed(cfg.sample_seed)
        idx = [idx[int(k)] for k in torch.randperm(len(idx), generator=g)[: arm.n]]
    return [pool_to_set(pool.subset(idx), cfg.image_size, source=f"real:{arm.centre}")]


def _n_added(cfg: ExperimentConfig, base: Pool) -> int:
    if cfg.n_added != "to_balance":
        return int(cfg.n_added)
    counts = base.counts(cfg.classes)
    other = cfg.classes[1 - cfg.add_index]
    n = counts[other] - counts[cfg.classes[cfg.add_index]]
    if n <= 0:
        raise ValueError(f"n_added: to_balance: the added class already has {counts} images; nothing to balance")
    return n


def _write_predictions(path: Path, items: list[str], labels: torch.Tensor, log_probs: torch.Tensor, classes: list[str]) -> None:
    p = probabilities(log_probs)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["item_id", "label", *[f"p_{c}" for c in classes]])
        for i, item in enumerate(items):
            w.writerow([item, classes[int(labels[i])], *[f"{float(v):.6f}" for v in p[i]]])


def _arm_figures(cfg: ExperimentConfig, recv: Pool, cache: dict, centres: dict[str, Pool], k: int = 16) -> dict[str, str]:
    """Base64 grids of the images each arm adds, next to real images of both classes: look at what the classifier was given."""
    from breastgan.evaluation.report import image_grid, png_base64

    figs: dict[str, str] = {}
    train = recv.where_split("train")
    for c, name in enumerate(cfg.classes):
        idx = [i for i, v in enumerate(train.labels) if int(v) == c][:k]
        if idx:
            figs[f"real {name} ({cfg.receiving}, train)"] = png_base64(image_grid(pool_to_set(train.subset(idx), cfg.image_size).images, cols=8))
    for (arm_name, _n), sets in cache.items():
        for s in sets:
            figs[f"{arm_name}: {s.sources[0]}"] = png_base64(image_grid(s.images[:k], cols=8))
    for arm in cfg.arms:
        if isinstance(arm, RealArm):
            pool = centres[arm.centre]
            idx = [i for i, v in enumerate(pool.labels) if int(v) == cfg.add_index][:k]
            figs[f"{arm.name}: real {cfg.classes[cfg.add_index]} ({arm.centre})"] = png_base64(image_grid(pool_to_set(pool.subset(idx), cfg.image_size).images, cols=8))
    return figs


def run_experiment(config: ExperimentConfig | dict | str | Path, *, overrides: list[str] | None = None,
                   log: Callable[[str], None] = print) -> ExperimentResult:
    cfg = config if isinstance(config, ExperimentConfig) else load_experiment_config(config, overrides)
    out = cfg.experiment_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _select_device(cfg.device)
    centres = {name: load_centre(spec, cfg.classes, name) for name, spec in cfg.centres.items()}
    recv = centres[cfg.receiving]
    notes = [n for p in centres.values() for n in p.notes]
    val = pool_to_set(recv.where_split("val"), cfg.image_size)
    test = pool_to_set(recv.where_split("test"), cfg.image_size)
    for what, s in (("val", val), ("test", test)):
        present = set(int(v) for v in s.labels)
        if present != {0, 1}:
            raise ValueError(f"receiving centre {cfg.receiving}: the {what} split needs both classes, has {sorted(cfg.classes[c] for c in present)}")
    summary = {"centres": {k: {"n": len(p), "by_split": {s: p.where_split(s).counts(cfg.classes) for s in sorted(set(p.splits))},
                               "patients": len(set(p.patients))} for k, p in centres.items()}}
    results: list[dict[str, Any]] = []
    compositions: dict[str, Any] = {}
    cache: dict = {}
    centre_specs = {k: v.model_dump(mode="json") for k, v in cfg.centres.items()}
    for fraction in cfg.fractions:
        base = training_fraction(recv, fraction, cfg.fraction_seed, cfg.classes)
        n_add = _n_added(cfg, base)
        for arm in cfg.arms:
            added = _added_sets(cfg, arm, n_add, centres, cache)
            train, comp = compose(base, added, add_label=cfg.add_index, balance=cfg.balance, order_seed=cfg.fraction_seed,
                                  size=cfg.image_size, on_shortage=cfg.on_shortage)
            comp["by_class"] = {cfg.classes[int(k)]: v for k, v in comp["by_class"].items()}
            comp["receiving_patients"] = len(set(base.patients))
            compositions[f"{fraction_label(fraction)}/{arm.name}"] = comp
            notes += comp["notes"]
            for clf in cfg.classifiers:
                for seed in cfg.seeds:
                    run_dir = out / "runs" / _slug(clf.title) / fraction_label(fraction).replace("%", "pct") / _slug(arm.name) / f"seed{seed}"
                    fp = _fingerprint({"centres": centre_specs, "receiving": cfg.receiving, "classes": cfg.classes, "add": cfg.add_index,
                                       "size": cfg.image_size, "fraction": fraction, "fraction_seed": cfg.fraction_seed, "arm": arm.model_dump(mode="json"),
                                       "n_added": n_add, "balance": cfg.balance, "sample_seed": cfg.sample_seed, "classifier": clf.model_dump(mode="json"), "seed": seed})
                    done = run_dir / "metrics.json"
                    if done.is_file():
                        prev = json.loads(done.read_text())
                        if prev.get("fingerprint") != fp:
                            raise ValueError(f"{run_dir}: holds a run with other settings; delete it or choose another experiment name")
                        results.append(prev["row"])
                        log(f"reused {run_dir}")
                        continue
                    torch.manual_seed(seed)  # weight initialisation depends on the seed only
                    model = CLASSIFIERS.build(clf.name, clf.args, num_classes=2, image_size=cfg.image_size)
                    t0 = time.perf_counter()
                    fitted = fit(model, train, val, clf.fit, seed, run_dir, device, positive=1)
                    test_lp = predict(model, test, clf.fit.eval_batch_size, device)
                    metrics = binary_metrics(test_lp, test.labels, positive=1)
                    _write_predictions(run_dir / "predictions.csv", test.items, test.labels, test_lp, cfg.classes)
                    row = {"classifier": clf.title, "arm": arm.name, "fraction": fraction, "seed": seed, **metrics,
                           "best_epoch": fitted.best_epoch, "epochs_run": fitted.epochs_run, "n_train": len(train),
                           "n_test": len(test), "parameters": count_parameters(model), "seconds": round(time.perf_counter() - t0, 1),
                           "run_dir": str(run_dir)}
                    write_json_atomic(done, {"fingerprint": fp, "row": row, "test": metrics, "best_val": fitted.best_val,
                                             "composition": comp, "realised_mix_last_epoch": fitted.log[-1]["drawn_by_source"]})
                    results.append(row)
                    log(f"{clf.title} {fraction_label(fraction)} {arm.name} seed {seed}: " + ", ".join(f"{m} {metrics[m]:.3f}" for m in METRIC_NAMES)
                        + f" (best epoch {fitted.best_epoch}/{fitted.epochs_run}, {row['seconds']} s)")
    summary["compositions"] = compositions
    summary["notes"] = notes
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "results.csv", csv_text(results))
    table = aggregate(results)
    write_text_atomic(out / "table.csv", csv_text(table))
    arms, clfs = [a.name for a in cfg.arms], [c.title for c in cfg.classifiers]
    md = markdown_table(table, arms, cfg.fractions, clfs, cfg.receiving)
    write_text_atomic(out / "table.md", md)
    section = html_section(table, arms, cfg.fractions, clfs, cfg.receiving, title=f"Downstream utility: {cfg.name}", notes=notes,
                           figures=_arm_figures(cfg, recv, cache, centres))
    write_text_atomic(out / "utility_section.html", section)
    write_text_atomic(out / "report.html", standalone_html(section, f"breastgan utility: {cfg.name}"))
    return ExperimentResult(out, results, table, md)
