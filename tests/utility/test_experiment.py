"""A tiny end-to-end utility experiment on phantom data through the CLI: all arms, fractions and seeds."""

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from breastgan.cli import _register_all, app
from breastgan.utility import load_experiment_config

_register_all()
runner = CliRunner()

ARMS = ["None", "G0", "Both", "Real B"]


def _config(tmp_path, gens):
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "classes": ["healthy", "lesion"],
        "image_size": 16,
        "centres": {
            "A": {"dataset": "phantom", "args": {"n": 160, "size": 32, "seed": 1, "lesion_fraction": 0.3}},
            "B": {"dataset": "phantom", "args": {"n": 40, "size": 32, "seed": 2, "lesion_fraction": 1.0}},
        },
        "receiving": "A",
        "n_added": 12,
        "arms": [
            {"kind": "none"},
            {"kind": "synthetic", "name": "G0", "generators": [{"source": gens[0]}]},
            {"kind": "synthetic", "name": "Both", "generators": [{"source": gens[0]}, {"source": gens[1]}]},
            {"kind": "real", "name": "Real B", "centre": "B", "n": 12},
        ],
        "fractions": [1.0, 0.5],
        "classifiers": [{"name": "cnn", "label": "CNN", "args": {"channels": [4, 8, 8, 8], "hidden": 16}, "fit": {"epochs": 2, "batch_size": 16}}],
        "seeds": [0, 1, 2],
        "device": "cpu",
    }


def test_tiny_experiment_end_to_end(tmp_path, tiny_generators):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, tiny_generators)))
    result = runner.invoke(app, ["utility", "--config", str(cfg_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "tiny"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 * 2 * 3
    assert {(r["arm"], r["fraction"], r["seed"]) for r in rows} == {(a, f, str(s)) for a in ARMS for f in ("1.000000", "0.500000") for s in range(3)}
    table = list(csv.DictReader(open(out / "table.csv")))
    assert len(table) == 8 and all(r["n_seeds"] == "3" for r in table)
    md = (out / "table.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in md
    assert "AUPRC (50% of A)" in md and "(." in md  # mean(std) cells
    assert '<section id="utility">' in (out / "report.html").read_text()
    for r in rows:
        run = tmp_path / "out" / "tiny" / r["run_dir"].split("/tiny/", 1)[1]
        assert (run / "log.jsonl").is_file() and (run / "best.safetensors").is_file() and (run / "predictions.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    comp = summary["compositions"]
    assert comp["100%/None"]["by_class"]["healthy"] == comp["100%/None"]["by_class"]["lesion"]
    assert comp["100%/Both"]["added"] == 12 and len([k for k in comp["100%/Both"]["by_source"] if k.startswith("synthetic:")]) == 2
    assert comp["50%/Real B"]["by_source"]["real:B"] == 12
    # the realised mix of a synthetic arm's last epoch includes synthetic draws
    both = json.loads((out / "runs" / "CNN" / "100pct" / "Both" / "seed0" / "metrics.json").read_text())
    assert sum(v for k, v in both["realised_mix_last_epoch"].items() if k.startswith("synthetic:")) == 12

    again = runner.invoke(app, ["utility", "--config", str(cfg_path)])  # completed runs are reused
    assert again.exit_code == 0 and again.output.count("reused") == 24


def test_centre_source_lists_exactly_the_centres_images(tmp_path, tiny_generators):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, tiny_generators)))
    result = runner.invoke(app, ["utility", "--config", str(cfg_path), "--centre-source", "B"])
    assert result.exit_code == 2 and "phantom centre" in result.output


@pytest.mark.parametrize("patch,match", [
    ({"receiving": "Z"}, "receiving"),
    ({"unknown_key": 1}, "unknown key"),
    ({"arms": [{"kind": "real", "name": "R", "centre": "A"}]}, "another centre"),
    ({"n_added": "to_balance"}, "balance: false"),
    ({"classifiers": [{"name": "resnet"}]}, "unknown classifier"),
])
def test_config_errors_are_clear(tmp_path, patch, match):
    raw = {**_config(tmp_path, ["g0", "g1"]), **patch}
    with pytest.raises((ValueError, KeyError), match=match):
        load_experiment_config(raw)


@pytest.mark.parametrize("name", ["minimias_sharing", "minimias_sharing_swin_cpu", "minimias_sharing_swin_gpu", "busi_imbalance"])
def test_example_configs_validate(name):
    from pathlib import Path

    cfg = load_experiment_config(Path(__file__).resolve().parents[2] / "configs" / "utility" / f"{name}.yaml")
    assert cfg.receiving in cfg.centres and cfg.arms


def test_list_needs_no_config_and_a_missing_config_is_explained():
    listed = runner.invoke(app, ["utility", "--list"])
    assert listed.exit_code == 0 and "cnn" in listed.output and "swin_t" in listed.output
    missing = runner.invoke(app, ["utility"])
    assert missing.exit_code != 0 and "--config" in missing.output


def test_utility_section_is_inserted_once_into_an_existing_report(tmp_path):
    from breastgan.utility.tables import html_section, insert_section

    agg = [{"classifier": "CNN", "arm": "None", "fraction": 1.0, "n_seeds": 3, "seeds": "0 1 2",
            **{f"{m}_{s}": 0.5 for m in ("accuracy", "f1", "auroc", "auprc") for s in ("mean", "std")}}]
    section = html_section(agg, ["None"], [1.0], ["CNN"], "A")
    report = tmp_path / "report.html"
    report.write_text("<html><body><h1>evaluation</h1></body></html>\n")
    insert_section(report, section)
    insert_section(report, section)  # replaced, not duplicated
    text = report.read_text()
    assert text.count('<section id="utility">') == 1 and "0.500(.500)" in text and text.index("<h1>") < text.index("<section")
