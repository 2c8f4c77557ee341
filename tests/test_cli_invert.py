"""``breastgan invert`` end to end on a hand-built DCGAN run, and its refusals."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent / "generation"))  # handbuilt.py: hand-built run directories

from handbuilt import dcgan, make_run, translation_run  # noqa: E402

from breastgan.cli import _register_all, app  # noqa: E402
from breastgan.data.io import read_image, write_image  # noqa: E402

ARGS = {"image_size": 32, "latent_dim": 8, "base_width": 8}


@pytest.fixture(scope="module")
def cli():
    _register_all()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def noise_run(tmp_path) -> tuple[Path, torch.nn.Module]:
    G = dcgan(3, **ARGS)
    run = make_run(tmp_path / "run", kind="noise", components={"generator": ("dcgan", ARGS, "generator")},
                   weights={"generator": dcgan(4, **ARGS)}, ema={"generator": G},
                   inputs={"latent": {"dim": 8}}, output={"channels": 1, "image_size": [32, 32], "bit_depth": 16})
    return run, G


def write_targets(folder: Path, G: torch.nn.Module, n: int = 3) -> np.ndarray:
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = ((G(z) + 1) / 2).numpy()[:, 0]
    folder.mkdir(parents=True)
    write_image(folder / "a.png", x[0])
    (folder / "sub").mkdir()
    write_image(folder / "sub" / "b.png", x[1])
    np.save(folder / "c.npy", x[2].astype(np.float32))
    return x


def test_invert_writes_reconstructions_codes_psnr_and_summary(tmp_path, cli, noise_run):
    run, G = noise_run
    targets = write_targets(tmp_path / "imgs", G)
    out = tmp_path / "out"
    res = cli("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", out, "--codes", 4, "--layer", 2, "--steps", 60,
              "--optimizer", "adam", "--lr", 0.05, "--batch-size", 2, "--seed", 3)
    assert res.exit_code == 0, res.output
    assert "patient data" in res.output
    names = ["a.png", "c.npy", "sub/b.png"]
    rows = list(csv.DictReader((out / "psnr.csv").open()))
    assert [r["file"] for r in rows] == names and set(rows[0]) == {"file", "psnr_db", "mse"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fitted_to_images"] is True and "patient data" in summary["warning"]
    assert summary["n"] == 3 and summary["seed"] == 3 and summary["settings"]["n_codes"] == 4 and summary["settings"]["layer"] == 2
    assert summary["settings"]["steps"] == 60 and summary["settings"]["optimizer"] == "adam" and "torch" in summary["versions"]
    psnrs = [float(r["psnr_db"]) for r in rows]
    assert summary["psnr_db"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert summary["psnr_db"]["median"] == pytest.approx(np.median(psnrs), abs=1e-3)
    with safe_open(str(out / "codes.safetensors"), "pt") as f:
        meta = f.metadata()
        codes, alphas = f.get_tensor("codes"), f.get_tensor("alphas")
    assert codes.shape == (3, 4, 8) and alphas.shape[:2] == (3, 4)
    assert meta["layer"] == "2" and meta["n_codes"] == "4" and meta["generator"] == str(run) and json.loads(meta["files"]) == names
    assert json.loads(meta["settings"])["seed"] == 3
    order = {"a.png": 0, "sub/b.png": 1, "c.npy": 2}
    for name, row in zip(names, rows):
        rec = read_image(out / "reconstructions" / Path(name).with_suffix(".png"))
        assert rec.bit_depth == 16 and rec.pixels.shape == (32, 32)
        # the PSNR in the csv is the written reconstruction's against its input (independent recomputation)
        mse = float(np.mean((rec.pixels.astype(np.float64) - targets[order[name]]) ** 2))
        assert float(row["psnr_db"]) == pytest.approx(10 * np.log10(1 / mse), abs=0.05)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left

    # a second invert into the same folder: refused, then replaced with --overwrite
    again = ("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", out, "--codes", 2, "--layer", 1, "--steps", 2)
    res = cli(*again)
    assert res.exit_code == 2 and "output folder is not empty" in res.output
    res = cli(*again, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["settings"]["n_codes"] == 2


def test_invert_refuses_bad_inputs_with_clear_errors(tmp_path, cli, noise_run):
    run, G = noise_run
    write_targets(tmp_path / "imgs", G)
    base = ("--steps", 1, "--codes", 2, "--layer", 1)
    (tmp_path / "small").mkdir()
    write_image(tmp_path / "small" / "x.png", np.zeros((16, 24), np.float32))
    res = cli("invert", "--generator", run, "--images", tmp_path / "small", "--out", tmp_path / "o1", *base)
    assert res.exit_code == 2 and "x.png: image is 16x24, the generator makes 32x32 images" in res.output
    assert not (tmp_path / "o1").exists()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    res = cli("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", tmp_path / "busy", *base)
    assert res.exit_code == 2 and "output folder is not empty" in res.output
    res = cli("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", tmp_path / "busy", *base, "--overwrite")
    assert res.exit_code == 2 and "replaces only an earlier 'breastgan invert' output" in res.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"

    trans = translation_run(tmp_path / "trans")
    res = cli("invert", "--generator", trans, "--images", tmp_path / "imgs", "--out", tmp_path / "o2", *base)
    assert res.exit_code == 2 and "is a translation model; invert needs a single noise generator" in res.output

    res = cli("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", tmp_path / "o3", "--steps", 1)  # default layer 8
    assert res.exit_code == 2 and "layer 8 is out of range" in res.output and "valid layers are 1..3" in res.output
    res = cli("invert", "--generator", run, "--images", tmp_path / "imgs", "--out", tmp_path / "o4", *base, "--optimizer", "lbfgs")
    assert res.exit_code == 2 and "unknown inversion optimizer 'lbfgs'" in res.output
    res = cli("invert", "--generator", tmp_path / "nowhere", "--images", tmp_path / "imgs", "--out", tmp_path / "o5", *base)
    assert res.exit_code == 2 and "nowhere: does not exist" in res.output


def test_invert_reads_a_generator_package(tmp_path, cli, noise_run):
    from breastgan.sharing.package import export_package

    run, G = noise_run
    write_targets(tmp_path / "imgs", G)
    export_package(run, tmp_path / "pkg", force=True, override_reason="hand-built test generator", name="tiny-noise")
    res = cli("invert", "--generator", tmp_path / "pkg", "--images", tmp_path / "imgs", "--out", tmp_path / "out", "--steps", 2,
              "--codes", 2, "--layer", 3)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["generator"] == str(tmp_path / "pkg") and summary["g1"]["layer_name"] == "block3_16x16"
