"""The sharing commands end to end: audit, export, verify, generate --package, hub."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from breastgan.cli import _register_all, app
from breastgan.data.io import write_image

_register_all()
runner = CliRunner()


def _folder(images, path):
    path.mkdir()
    for i, img in enumerate(images):
        write_image(path / f"h{i:03d}.png", img[0].numpy(), bit_depth=16)
    return path


def test_audit_export_verify_generate_hub(tiny_run, holdout_images, tmp_path):
    holdout = _folder(holdout_images[:32], tmp_path / "holdout")
    fast = ["--n-samples", "40", "--no-inversion"]
    r = runner.invoke(app, ["audit", "--run", str(tiny_run), "--holdout", str(holdout), "--out", str(tmp_path / "a.json"), *fast])
    assert r.exit_code in (0, 1), r.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert (r.exit_code == 0) == report["passed"] and "mia_auc" in r.output
    # thresholds alone (no membership permutation test): a threshold of 0 must fail the gate
    uncalibrated = tmp_path / "uncalibrated.yaml"
    uncalibrated.write_text("n_permutations: 0\n")
    r = runner.invoke(app, ["audit", "--run", str(tiny_run), "--holdout", str(holdout), "-t", "max_mia_auc=0", "--config", str(uncalibrated), *fast])
    assert r.exit_code == 1 and "FAILED" in r.output
    r = runner.invoke(app, ["audit", "--run", str(tiny_run), "--holdout", str(holdout), "-t", "bogus=1"])
    assert r.exit_code == 2 and "max_mia_auc" in r.output

    pkg = tmp_path / "pkg"
    r = runner.invoke(app, ["export", "--run", str(tiny_run), "--out", str(pkg), "--holdout", str(holdout), "-t", "max_mia_auc=0",
                            "--audit-config", str(uncalibrated), *fast])
    assert r.exit_code == 2 and "privacy audit failed" in r.output and not pkg.exists()
    r = runner.invoke(app, ["export", "--run", str(tiny_run), "--out", str(pkg), "--holdout", str(holdout), *fast,
                            "--force", "--reason", "cli test", "--licence", "CC-BY-4.0", "--name", "cli-model"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(pkg)])
    assert r.exit_code == 0 and "VERIFIED" in r.output, r.output
    r = runner.invoke(app, ["generate", "--package", str(pkg), "-n", "3", "--out", str(tmp_path / "imgs")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "imgs" / "manifest.json").read_text())["count"] == 3
    (pkg / "notes.txt").write_text("hi")
    r = runner.invoke(app, ["verify", str(pkg)])
    assert r.exit_code == 2 and "not listed" in r.output
    (pkg / "notes.txt").unlink()

    hub = ["--hub", str(tmp_path / "hub")]
    assert runner.invoke(app, ["hub", "add", str(pkg), *hub]).exit_code == 0
    r = runner.invoke(app, ["hub", "search", "--resolution", "32", *hub])
    assert r.exit_code == 0 and "cli-model" in r.output
    r = runner.invoke(app, ["hub", "info", "cli-model", *hub])
    assert json.loads(r.output)["manifest"]["licence"] == "CC-BY-4.0"
    assert runner.invoke(app, ["hub", "remove", "cli-model", *hub]).exit_code == 0
    r = runner.invoke(app, ["hub", "list", *hub])
    assert "cli-model" not in r.output
    r = runner.invoke(app, ["hub", "pull", "--repo", "a/b", "--revision", "main", *hub])
    assert r.exit_code == 2 and "pin a full commit" in r.output
