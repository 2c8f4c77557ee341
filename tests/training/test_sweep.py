"""breastgan sweep: grid expansion, a 2x2 sweep of tiny runs with a complete table, skip on re-run, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from breastgan.config import ConfigError
from breastgan.training import sweep as sw


def _feature_net(path: Path) -> Path:
    """A tiny TorchScript feature network (the evaluation suite's torchscript extractor): no Inception on CI."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.jit.script(net.eval()).save(str(path))
    return path


def _base(tmp_path: Path, steps: int = 4, checkpoint_every: int = 2) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"source": {"dataset": "phantom_ultrasound", "n": 32, "size": 32, "seed": 1}, "vflip": False},
        "model": {"generator": {"arch": "dcgan", "base_width": 8, "latent_dim": 16}, "discriminator": {"arch": "dcgan", "base_width": 8, "kernel_size": 4}},
        "loss": {"name": "nonsaturating"},
        "train": {"batch_size": 8, "max_steps": steps, "log_every": 1, "sample_every": 2, "checkpoint_every": checkpoint_every, "progress": False,
                  "grid_size": 4, "device": "cpu", "ema": {"decay": 0.0}},
    }
    p = tmp_path / "base.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _sweep_file(tmp_path: Path, base: Path, extra: dict | None = None) -> Path:
    net = _feature_net(tmp_path / "feat.pt")
    tree = {
        "name": "tiny-sweep", "base": base.name, "output": str(tmp_path / "out"), "workers": 2,
        "axes": {"loss": {"ns": {"loss.name": "nonsaturating", "optim.lr_g": "${lr}"}, "hinge": {"loss.name": "hinge", "optim.lr_g": "${lr}"}},
                 "lr": [0.0002, 0.001]},
        "seeds": [0],
        "evaluate": {"n": 16, "metrics": ["kid", "ms-ssim", "memorisation"],
                     "options": {"kid": {"subset_size": 8, "subsets": 10}, "ms-ssim": {"n_pairs": 8}, "memorisation": {"feature_space": False}},
                     "extractor": {"name": "torchscript", "path": str(net)},
                     # the runs' own training images, and phantom images from another seed as the held-out reference
                     "train": {"dataset": "phantom_ultrasound", "n": 32, "size": 32, "seed": 1},
                     "heldout": {"dataset": "phantom_ultrasound", "n": 16, "size": 32, "seed": 2}},
        "curves": ["loss_d", "loss_g"],
        **(extra or {}),
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(tree, sort_keys=False))
    return p


def test_expand_bundles_variables_and_keys(tmp_path):
    cfg, _ = sw.load_sweep(_sweep_file(tmp_path, _base(tmp_path)), grid=["train.batch_size=4,8"], seeds=[0, 1])
    runs = sw.expand(cfg)
    assert len(runs) == 2 * 2 * 2 * 2
    r = runs[0]
    assert r.id == "loss-ns_lr-0.0002_train.batch-size-4_seed-0"
    assert "optim.lr_g=0.0002" in r.overrides and "loss.name=nonsaturating" in r.overrides and "train.batch_size=4" in r.overrides
    assert r.overrides[-1] == "train.seed=0"
    assert {x.labels["seed"] for x in runs} == {0, 1}
    # the ${lr} substitution keeps the number a number after YAML parsing
    from breastgan.config import load_config

    assert load_config(tmp_path / "base.yaml", r.overrides).optim.lr_g == pytest.approx(0.0002)


def test_sweep_config_errors_name_the_axis(tmp_path):
    base = _base(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": base.name, "axes": {"loss": {"a": {"loss.gp_lambda": "${lam}"}}}}))
    with pytest.raises(ConfigError, match=r"axes.loss.a.loss.gp_lambda: \$\{lam\} names no variable axis"):
        sw.load_sweep(bad)
    bad.write_text(yaml.safe_dump({"base": base.name, "axes": {"lam": [1, 2]}}))
    with pytest.raises(ConfigError, match="no bundle uses it"):
        sw.load_sweep(bad)
    bad.write_text(yaml.safe_dump({"base": base.name, "axes": {"run": {"a": {"loss.name": "hinge"}}}}))
    with pytest.raises(ConfigError, match="axes.run: 'run' is a column of the results table already"):
        sw.load_sweep(bad)  # it would overwrite the run id column of every row
    with pytest.raises(ConfigError, match="--grid 'x': expected key=value1,value2"):
        sw.load_sweep(base, grid=["x"])


def test_bad_axis_value_fails_before_any_run(tmp_path):
    base = _base(tmp_path)
    cfg, here = sw.load_sweep(base, grid=["loss.name=hinge,nosuchloss"], output=tmp_path / "o")
    with pytest.raises(ConfigError, match="nosuchloss"):
        sw.run_sweep(cfg, here, echo=lambda s: None)
    assert not (tmp_path / "o" / "runs").exists() or not any((tmp_path / "o" / "runs").iterdir())


def test_two_by_two_sweep_table_then_skip(tmp_path):
    base = _base(tmp_path)
    cfg, here = sw.load_sweep(_sweep_file(tmp_path, base))
    lines: list[str] = []
    result = sw.run_sweep(cfg, here, echo=lines.append)
    out = tmp_path / "out"
    per_run = [ln for ln in lines if ln.startswith("[")]
    assert len(per_run) == 4 and all(" done in " in ln for ln in per_run), lines
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {(r["loss"], r["lr"]) for r in rows} == {("ns", "0.0002"), ("ns", "0.001"), ("hinge", "0.0002"), ("hinge", "0.001")}
    for r in rows:
        assert float(r["KID"]) == float(r["KID"])  # a number
        assert 0.0 <= float(r["MS-SSIM real-fake"]) <= 1.0 and 0.0 <= float(r["MS-SSIM fake-fake"]) <= 1.0
        assert r["steps"] == "4"
        # metrics beyond the seed's columns get their own columns, equal to the evaluation suite's metrics.json
        suite = json.loads((out / "eval" / r["run"] / "metrics.json").read_text())["metrics"]
        assert float(r["nn_ratio_pixel"]) == pytest.approx(suite["nn_ratio_pixel"]["value"])
        assert float(r["near_copy_fraction"]) == pytest.approx(suite["near_copy_fraction"]["value"])
        assert suite["nn_ratio_pixel"]["details"]["reference"] == "held-out real images"
        assert suite["nn_ratio_pixel"]["n"]["train"] == 32 and suite["nn_ratio_pixel"]["n"]["reference"] == 16
    md = (out / "results.md").read_text()
    assert md.count("\n") == 2 + 4 and "| KID |" in md
    assert (out / "curves.png").stat().st_size > 1000
    # the figure's points as CSV: every logged loss_d of a run, in step order, from its own metrics.jsonl
    points = list(csv.DictReader(open(out / "curves.csv")))
    assert {p["metric"] for p in points} == {"loss_d", "loss_g"} and len({p["run"] for p in points}) == 4
    rid = "loss-hinge_lr-0.001_seed-0"
    logged = [json.loads(ln) for ln in (out / "runs" / rid / "logs" / "metrics.jsonl").read_text().splitlines()]
    want = [rec["loss_d"] for rec in sorted(logged, key=lambda r: r["step"]) if "loss_d" in rec]
    got = [float(p["value"]) for p in points if p["run"] == rid and p["metric"] == "loss_d"]
    assert got == pytest.approx(want) and len(got) == 4
    curves_md = (out / "curves.md").read_text()
    assert "### loss_d" in curves_md and "### loss_g" in curves_md and curves_md.count(f"| {rid} |") == 2
    section = (out / "report_section.html").read_text()
    table, _, details = section.partition("<details>")
    assert section.startswith("<section") and table.count("<tr>") == 5 and "data:image/png;base64" in section
    assert details.count("<tr>") == 1 + len(points)  # the curve values under the figure
    # each run was evaluated by the evaluation suite (its metrics.json is there)
    assert all((out / "eval" / r.id / "metrics.json").is_file() for r in sw.expand(cfg))
    assert result.files["csv"] == out / "results.csv"

    again: list[str] = []
    sw.run_sweep(cfg, here, echo=again.append)
    assert sum("skipped (finished earlier)" in ln for ln in again) == 4 and not any(" done in " in ln for ln in again)

    # an edited base config or evaluation must not reuse results made under the old one
    tree = yaml.safe_load(base.read_text())
    tree["train"]["max_steps"] = 5
    base.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"4 run\(s\) .* different configuration.*loss-ns_lr-0.0002_seed-0 \(changed: train.max_steps\)"):
        sw.run_sweep(cfg, here, echo=lambda s: None)
    tree["train"]["max_steps"] = 4
    base.write_text(yaml.safe_dump(tree))
    edited = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"n": 12})})
    with pytest.raises(ConfigError, match=r"changed: evaluate.n\)"):
        sw.run_sweep(edited, here, echo=lambda s: None)
    assert (out / "results.csv").is_file()  # refused before touching anything
    sw.run_sweep(cfg, here, echo=lambda s: None)  # the original configuration is accepted again


def test_killed_sweep_resumes_the_unfinished_run(tmp_path):
    base = _base(tmp_path, steps=40, checkpoint_every=4)
    sweep_file = _sweep_file(tmp_path, base, {"axes": {"loss.name": ["nonsaturating"]}, "workers": 1, "evaluate": {"enabled": False}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "breastgan", "sweep", "--config", str(sweep_file)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = tmp_path / "out" / "runs" / "loss.name-nonsaturating_seed-0"
    try:
        deadline = time.monotonic() + 240  # a guard against a hung child only; not a speed check
        while time.monotonic() < deadline and not list((run_dir / "checkpoints").glob("step_*")):
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        assert list((run_dir / "checkpoints").glob("step_*")), "no checkpoint appeared"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, without any chance to clean up
        proc.wait()
    assert not (tmp_path / "out" / "results" / "loss.name-nonsaturating_seed-0.json").exists()
    lines: list[str] = []
    cfg, here = sw.load_sweep(sweep_file)
    import breastgan.training.sweep as mod

    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        mod.run_sweep(cfg, here, echo=lines.append)
    finally:
        os.chdir(old)
    assert any("resumed and done" in ln for ln in lines), lines
    log = (tmp_path / "out" / "logs" / "loss.name-nonsaturating_seed-0.log").read_text()
    assert "resumed from" in log
    res = json.loads((tmp_path / "out" / "results" / "loss.name-nonsaturating_seed-0.json").read_text())
    assert res["step"] == 40 and res["resumed"] is True
    run = json.loads((run_dir / "run.json").read_text())
    assert len(run.get("sessions", [])) >= 2, run.keys()
