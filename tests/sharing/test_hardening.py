"""Issue 12, defects 3-5: package bypass, memory exhaustion by a hostile model description, stale outputs."""

from __future__ import annotations

import json
import os
import shutil

import handbuilt
import pytest
import torch
from sharing_helpers import read_manifest, write_manifest
from typer.testing import CliRunner

import breastgan
from breastgan.cli import _register_all, app
from breastgan.generation import GeneratorLoadError, load_generator
from breastgan.generation import kinds as kinds_mod
from breastgan.models.registry import GENERATORS
from breastgan.sharing import PackageError, load_package

_register_all()
runner = CliRunner()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A hand-built noise run (no training needed): DCGAN 32 px, latent 8."""
    args = {"image_size": 32, "latent_dim": 8, "base_width": 8}
    return handbuilt.make_run(tmp_path_factory.mktemp("hardening") / "run", kind="noise", components={"generator": ("dcgan", args, "generator")},
                              weights={"generator": handbuilt.dcgan(1)}, inputs={"latent": {"dim": 8}})


def _no_build(monkeypatch):
    monkeypatch.setattr(kinds_mod.PlannedComponent, "build", lambda self: pytest.fail("a module was built before the size was bounded"))


# -- defect 3: --package loads only through the package loader ----------------------------------
@pytest.fixture
def run_lookalike(small_run, tmp_path):
    """A folder without manifest.json that looks like a run: model.json, checkpoints symlinked from
    elsewhere, and an unlisted evil.py."""
    fake = tmp_path / "not-a-package"
    fake.mkdir()
    shutil.copy(small_run / "model.json", fake / "model.json")
    os.symlink(small_run / "checkpoints", fake / "checkpoints")
    (fake / "evil.py").write_text("import os; os.system('touch pwned')")
    return fake


def test_generate_package_refuses_a_run_lookalike(run_lookalike, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "--package", str(run_lookalike), "-n", "2", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "manifest.json is missing" in r.output and not list(out.glob("img_*"))


def test_generate_run_refuses_a_package_and_package_loader_refuses_symlinks(package_v1, run_lookalike, tmp_path):
    r = runner.invoke(app, ["generate", "--run", str(package_v1), "-n", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a breastgan run directory" in r.output and "generator package" in r.output, r.output
    with pytest.raises(GeneratorLoadError, match="not a breastgan run directory.*it is an exported generator package"):
        load_generator(package_v1, only="run")  # the source restriction --run uses
    (run_lookalike / "manifest.json").write_text(json.dumps(read_manifest(package_v1)))
    with pytest.raises(PackageError, match="not listed"):  # with a manifest the strict checks apply: evil.py, the symlink
        load_package(run_lookalike)


def test_generate_package_flags_that_apply_to_runs_only(package_v1, tmp_path):
    r = runner.invoke(app, ["generate", "--package", str(package_v1), "-n", "2", "--out", str(tmp_path / "o"), "--checkpoint", "best"])
    assert r.exit_code == 2 and "--checkpoint, --raw and --snapshots apply to --run" in r.output


# -- defect 4: the model a file describes is bounded before anything is built --------------------
def test_module_size_on_meta_matches_the_built_module_and_leaves_the_rng_alone():
    entry = GENERATORS.entry("dcgan")
    args = entry.validate_args({"image_size": 64, "latent_dim": 20, "base_width": 8, "num_classes": 3}).model_dump()
    state = torch.random.get_rng_state()
    size = kinds_mod.module_size(entry, args)
    assert torch.equal(state, torch.random.get_rng_state())
    real = entry.obj(**args).state_dict()
    assert size.elements == sum(t.numel() for t in real.values())
    assert size.nbytes == sum(t.numel() * t.element_size() for t in real.values())


def test_huge_but_consistent_package_is_refused_before_building(package_v1, monkeypatch):
    # every argument valid and consistent with the manifest: 1.0e9 parameters (4.8 GB and 18 s before the fix)
    m = read_manifest(package_v1)
    m["architecture"]["args"].update(image_size=256, base_width=1024, max_width=4096, embed_dim=1024)
    m["output"].update(height=256, width=256)
    write_manifest(package_v1, m)
    _no_build(monkeypatch)
    with pytest.raises(PackageError, match=r"architecture.args describe a 'dcgan' whose weights take 4,165,328,948 bytes "
                                           r"\(1,041,332,231 elements\), but .*generator.safetensors holds only 84,980 bytes.*"
                                           r"most of them come from architecture.args.max_width = 4096"):
        load_package(package_v1)


def test_class_count_mismatch_names_the_argument(package_v1, monkeypatch):
    m = read_manifest(package_v1)
    m["architecture"]["args"]["num_classes"] = 10**9
    write_manifest(package_v1, m)
    _no_build(monkeypatch)
    with pytest.raises(PackageError, match=r"labels.class_names \(count\) is 2 but architecture.args give 1000000000 "
                                           r"\(architecture.args.num_classes\)"):
        load_package(package_v1)


def test_run_with_a_billion_classes_is_bounded_and_the_argument_named(tmp_path, monkeypatch):
    args = {"image_size": 32, "latent_dim": 8, "base_width": 8}
    run = handbuilt.make_run(tmp_path / "r", kind="noise", components={"generator": ("dcgan", args, "generator")},
                             weights={"generator": handbuilt.dcgan(1)}, inputs={"latent": {"dim": 8}})
    m = json.loads((run / "model.json").read_text())
    m["components"]["generator"]["args"]["num_classes"] = 10**9  # no class_names: nothing to compare it with
    (run / "model.json").write_text(json.dumps(m))
    _no_build(monkeypatch)
    with pytest.raises(GeneratorLoadError, match=r"over the loader's bound of 1,073,741,824; the largest tensor is embed.weight of shape "
                                                 r"\[1000000000, 50\]; most of them come from components.generator.args.num_classes = 1000000000"):
        load_generator(run)


# -- defect 5: no stale images after generate into a used folder ----------------------------------
def _images(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("img_"))


def test_generate_refuses_a_used_folder_and_overwrite_leaves_only_the_new_set(small_run, tmp_path):
    out = tmp_path / "synth"
    assert runner.invoke(app, ["generate", "--run", str(small_run), "-n", "4", "--out", str(out)]).exit_code == 0
    r = runner.invoke(app, ["generate", "--run", str(small_run), "-n", "2", "--out", str(out)])
    assert r.exit_code == 2 and "output folder is not empty" in r.output and "--overwrite" in r.output
    assert len(_images(out)) == 4 and json.loads((out / "manifest.json").read_text())["count"] == 4  # untouched
    r = runner.invoke(app, ["generate", "--run", str(small_run), "-n", "2", "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 2 and _images(out) == [f["file"] for f in manifest["files"]] == ["img_00000000.png", "img_00000001.png"]
    assert sorted(os.listdir(out)) == ["img_00000000.png", "img_00000001.png", "manifest.json"]


def test_overwrite_never_removes_what_generate_did_not_write(small_run, tmp_path):
    gen = breastgan.load_generator(small_run)
    out = tmp_path / "synth"
    gen.save(out, n=3)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"only replaces what an earlier generate wrote.*notes.txt.*Nothing was removed"):
        gen.save(out, n=2, overwrite=True)
    assert len(_images(out)) == 3 and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    gen.save(out, n=2, fmt="npy", overwrite=True)  # a format change leaves no PNG behind
    assert _images(out) == ["img_00000000.npy", "img_00000001.npy"]
    with pytest.raises(ValueError, match="not empty"):
        gen.save(out, n=2)
