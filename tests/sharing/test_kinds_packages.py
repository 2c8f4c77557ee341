"""Schema-v2 packages of every kind: a two-component translator (a2b + b2a) and an inversion, exported
from hand-built run directories (tests/generation/handbuilt.py), verified, loaded, tampered with."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from sharing_helpers import read_manifest, resign, write_manifest

import breastgan
from handbuilt import TinyTranslator, inversion_run, translation_run, translator
from breastgan.generation import LoadedInversion, LoadedTranslator
from breastgan.generation.latents import synthetic_images
from breastgan.models.weights import state_dict_cpu
from breastgan.sharing import PackageError, load_package, verify_package
from breastgan.sharing.package import export_package


@pytest.fixture(scope="module")
def trun(tmp_path_factory):
    return translation_run(tmp_path_factory.mktemp("trun") / "run", size_multiple=4)


@pytest.fixture(scope="module")
def tpkg_exported(trun, tmp_path_factory):
    out = tmp_path_factory.mktemp("tpkg") / "pkg"
    export_package(trun, out, force=True, override_reason="hand-built test translator", name="tiny-translator", medigan=True)
    return out


@pytest.fixture
def tpkg(tpkg_exported, tmp_path):
    dst = tmp_path / "tpkg"
    shutil.copytree(tpkg_exported, dst)
    return dst


def test_translation_package_round_trip(tpkg_exported, trun):
    assert sorted(os.listdir(tpkg_exported)) == ["README.md", "a2b.safetensors", "b2a.safetensors", "manifest.json",
                                                 "medigan_metadata.json", "reference_samples.safetensors"]
    m = read_manifest(tpkg_exported)
    assert m["schema_version"] == 2 and m["kind"] == "translation"
    assert {r: c["weights"] for r, c in m["components"].items()} == {"a2b": "a2b.safetensors", "b2a": "b2a.safetensors"}
    assert m["components"]["a2b"]["architecture"] == {"key": "test-translator", "args": {"channels": 1, "width": 4, "size_multiple": 4}}
    assert m["inputs"] == {"image": {"channels": 1, "size_multiple": 4, "directions": ["a2b", "b2a"]}}
    assert m["labels"] == {"conditional": False, "class_names": []} and (m["output"]["height"], m["output"]["width"]) == (32, 32)
    assert sorted(m["reference_samples"]["sha256"]) == [f"seed_{s}_{d}" for s in (0, 1, 2) for d in ("a2b", "b2a")]
    assert m["reference_samples"]["input_images"] == "breastgan-synthetic-v1"
    assert {m["files"][f]["role"] for f in ("a2b.safetensors", "b2a.safetensors")} == {"weights"}
    report = verify_package(tpkg_exported)
    assert report.ok and set(report.samples) == set(m["reference_samples"]["sha256"])
    assert all(v["match"] == "exact" for v in report.samples.values())
    assert any("synthetic images made from each seed" in c for c in report.checks)
    pkg, run = breastgan.load_generator(tpkg_exported), breastgan.load_generator(trun)
    assert isinstance(pkg, LoadedTranslator) and pkg.directions == ["a2b", "b2a"] and pkg.size_multiple == 4
    x = torch.rand(3, 1, 16, 20, generator=torch.Generator().manual_seed(0))
    for d in ("a2b", "b2a"):
        assert torch.equal(pkg.translate(x, d), run.translate(x, d))
    # the reference file holds the translations of the synthetic inputs, nothing else
    refs = load_file(str(tpkg_exported / "reference_samples.safetensors"))
    inputs = synthetic_images(0, 4, 1, 32, 32, seed=1)
    assert torch.equal(refs["seed_1_b2a"], pkg.translate(inputs, "b2a")) and len(refs) == 6
    card = (tpkg_exported / "README.md").read_text()
    assert "gen.translate(x, 'a2b')" in card and "kind: translation" in card and "--input" in card
    medigan = json.loads((tpkg_exported / "medigan_metadata.json").read_text())["tiny-translator"]
    assert medigan["execution"]["generate_method"]["name"].endswith(".translate")
    with pytest.raises(PackageError, match="a generator package holds one set of weights"):
        breastgan.load_generator(tpkg_exported, snapshots="all")


@pytest.mark.parametrize("role", ["a2b", "b2a"])
def test_tampering_with_either_component_is_refused(tpkg, role):
    other = "b2a" if role == "a2b" else "a2b"
    f = tpkg / f"{role}.safetensors"
    original = f.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"{role}.safetensors: sha256 mismatch"):
        load_package(tpkg)
    with pytest.raises(PackageError, match="sha256 mismatch"):
        verify_package(tpkg)
    # re-signed with other well-formed weights: loads, but verify sees that it is not the published model
    save_file(state_dict_cpu(translator(99, size_multiple=4)), str(f))
    resign(tpkg)
    load_package(tpkg)
    report = verify_package(tpkg)
    assert not report.ok
    assert {k for k, v in report.samples.items() if v["match"] == "mismatch"} == {f"seed_{s}_{role}" for s in (0, 1, 2)}
    assert {v["match"] for k, v in report.samples.items() if k.endswith(other)} == {"exact"}
    # re-signed with weights of another shape, or with the other direction's weights under a wrong dtype
    sd = state_dict_cpu(translator(5, size_multiple=4))
    sd["net.0.weight"] = torch.zeros(4, 1, 5, 5)
    save_file(sd, str(f))
    resign(tpkg)
    with pytest.raises(PackageError, match=rf"{role}.safetensors: tensor 'net.0.weight' has shape \[4, 1, 5, 5\]"):
        load_package(tpkg)
    save_file({k: v.double() for k, v in load_file(str(tpkg / f"{other}.safetensors")).items()}, str(f))
    resign(tpkg)
    with pytest.raises(PackageError, match=f"{role}.safetensors: tensor .* has dtype F64"):
        load_package(tpkg)


def test_swapped_component_files_do_not_verify(tpkg):
    a, b = (tpkg / "a2b.safetensors").read_bytes(), (tpkg / "b2a.safetensors").read_bytes()
    (tpkg / "a2b.safetensors").write_bytes(b)
    (tpkg / "b2a.safetensors").write_bytes(a)
    with pytest.raises(PackageError, match="sha256 mismatch"):
        load_package(tpkg)
    resign(tpkg)
    assert {v["match"] for v in verify_package(tpkg).samples.values()} == {"mismatch"}


IMG = ("inputs", "image")


def _at(m, path):
    for p in path:
        m = m[p]
    return m


@pytest.mark.parametrize("mutate, message", [
    (lambda m: _at(m, IMG).update(directions=["a2b"]), r"inputs.image.directions \['a2b'\] must be the components \['a2b', 'b2a'\]"),
    (lambda m: _at(m, IMG).update(directions=["a2b", "a2b"]), "must be the components"),
    (lambda m: _at(m, IMG).update(channels=3), "output.channels is 1 but inputs.image.channels is 3"),
    (lambda m: (_at(m, IMG).update(channels=3), m["output"].update(channels=3)), "inputs.image.channels is 3 but components.a2b.architecture.args give 1"),
    (lambda m: _at(m, IMG).update(size_multiple=8), "inputs.image.size_multiple is 8 but components.a2b.architecture.args give 4"),
    (lambda m: _at(m, IMG).update(size_multiple=5), "must be multiples of inputs.image.size_multiple 5"),
    (lambda m: _at(m, IMG).update(loader="x"), "inputs.image.loader: unknown key"),
    (lambda m: m["inputs"].update(latent={"dim": 8}), "inputs.latent is not used by kind 'translation'"),
    (lambda m: m["inputs"].pop("image"), "inputs: kind 'translation' needs inputs.image"),
    (lambda m: m["reference_samples"].update(input_images=None), "reference_samples.input_images: a translation package's reference inputs must be named"),
    (lambda m: m["reference_samples"].update(input_images="real-images"), "reference_samples.input_images"),
    (lambda m: m["reference_samples"]["sha256"].pop("seed_0_b2a"), "reference_samples.sha256: keys"),
    (lambda m: m["labels"].update(conditional=True, class_names=["a", "b"]), "a translation model takes no class labels"),
    (lambda m: m["components"]["b2a"].update(weights="a2b.safetensors"), "components.a2b and components.b2a name the same weights file"),
    (lambda m: m["components"].update(c2d=m["components"]["b2a"]), r"\['c2d'\] is not a role of kind 'translation'"),
    (lambda m: m["components"]["a2b"]["architecture"].update(key="dcgan", args={}), "components.a2b.architecture.key 'dcgan' is a noise-to-image generator"),
    (lambda m: m["components"]["a2b"]["architecture"]["args"].update(width=5), r"a2b.safetensors: tensor 'net.0.weight' has shape \[4, 1, 3, 3\]"),
    (lambda m: m.update(kind="noise"), r"\['a2b', 'b2a'\] are not roles of kind 'noise'"),
])
def test_translation_manifest_rejections(tpkg, mutate, message):
    m = read_manifest(tpkg)
    mutate(m)
    write_manifest(tpkg, m)
    with pytest.raises(PackageError, match=message):
        load_package(tpkg)


def test_translation_manifest_is_checked_before_any_module_is_built(tpkg):
    m = read_manifest(tpkg)
    m["components"]["b2a"]["architecture"]["args"]["size_multiple"] = 2  # a2b is fine, b2a is not: nothing is built
    write_manifest(tpkg, m)
    before = TinyTranslator.built
    with pytest.raises(PackageError, match="inputs.image.size_multiple is 4 but components.b2a.architecture.args give 2"):
        load_package(tpkg)
    assert TinyTranslator.built == before


def test_generate_from_a_translation_package(tpkg_exported, tmp_path):
    from typer.testing import CliRunner

    from breastgan.cli import _register_all, app
    from breastgan.data.io import write_image

    _register_all()
    runner = CliRunner()
    (tmp_path / "in").mkdir()
    x = synthetic_images(0, 3, 1, 32, 32, seed=5)
    for i in range(3):
        write_image(tmp_path / "in" / f"x{i}.png", x[i, 0].numpy(), bit_depth=16)
    r = runner.invoke(app, ["generate", "--package", str(tpkg_exported), "--out", str(tmp_path / "out")])
    assert r.exit_code != 0 and "give --input FOLDER" in r.output
    r = runner.invoke(app, ["generate", "--package", str(tpkg_exported), "--input", str(tmp_path / "in"), "--direction", "b2a",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["generator"]["bound"] == {"inputs": 3, "directions": ["b2a"]}
    r = runner.invoke(app, ["verify", str(tpkg_exported)])
    assert r.exit_code == 0 and "VERIFIED" in r.output and "kind 'translation'" in r.output


def test_hub_indexes_the_kind(tpkg_exported, tmp_path):
    from breastgan.sharing.hub import LocalHub

    hub = LocalHub(tmp_path / "hub")
    e = hub.add(tpkg_exported)
    assert e.kind == "translation" and e.architecture == "test-translator" and hub.search(kind="translation") == [e]
    assert hub.search(kind="noise") == [] and isinstance(hub.load(e.id), LoadedTranslator)


def test_translator_audit_uses_its_translations_of_the_held_out_images(trun, holdout_images, tmp_path):
    from breastgan.sharing.audit import audit_run

    report = audit_run(trun, holdout_images, config={"n_samples": 100, "n_boot": 10, "n_candidates": 24, "inversion": {"enabled": True}})
    assert report["n"]["synthetic"] == 100 and report["n"]["holdout"] == 64
    assert "noise-to-image generator" in report["details"]["inversion_skipped"]
    res = export_package(trun, tmp_path / "p", holdout=holdout_images, force=True, override_reason="tiny test translator",
                         audit={"n_samples": 100, "n_boot": 10, "n_candidates": 24, "inversion": {"enabled": False}})
    assert res.manifest.privacy_audit.n["synthetic"] == 100 and verify_package(tmp_path / "p").ok


def test_evaluation_sources_take_any_kind(trun, tmp_path):
    from breastgan.evaluation.sources import resolve_source

    with pytest.raises(ValueError, match="bind"):
        resolve_source(trun, n=4)
    gen = breastgan.load_generator(trun)
    x = synthetic_images(0, 5, 1, 32, 32, seed=2)
    src = resolve_source(gen.bind(x, "a2b"))
    assert len(src) == 5 and src.describe()["model_kind"] == "translation"
    torch.testing.assert_close(src.load(), gen.translate(x, "a2b"))
    torch.testing.assert_close(torch.cat(list(src.batches(2))), src.load())  # batch size does not change the images
    run, _, _ = inversion_run(tmp_path / "inv", count=6)
    src = resolve_source(run)  # every reconstruction
    assert len(src) == 6
    with pytest.raises(ValueError, match="can make 6 images, 7 were asked for"):
        resolve_source(run, n=7)


# -- inversion ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inv(tmp_path_factory):
    run, G, codes = inversion_run(tmp_path_factory.mktemp("inv") / "run", count=6, conditional=True)
    out = tmp_path_factory.mktemp("ipkg") / "pkg"
    export_package(run, out, force=True, override_reason="hand-built test inversion", name="tiny-inversion")
    return run, out


def test_inversion_package_round_trip(inv, tmp_path):
    run, pkg = inv
    assert sorted(os.listdir(pkg)) == ["README.md", "codes.safetensors", "generator.safetensors", "manifest.json", "reference_samples.safetensors"]
    m = read_manifest(pkg)
    assert m["kind"] == "inversion" and m["inputs"]["codes"] == {"count": 6, "file": "codes.safetensors", "labels": True}
    assert m["files"]["codes.safetensors"]["role"] == "codes" and m["labels"]["class_names"] == ["healthy", "lesion"]
    assert verify_package(pkg).ok
    a, b = breastgan.load_generator(pkg), breastgan.load_generator(run)
    assert isinstance(a, LoadedInversion) and a.count == 6
    assert torch.equal(a.reconstruct([5, 0]), b.reconstruct([5, 0]))
    p = tmp_path / "p"
    shutil.copytree(pkg, p)
    t = load_file(str(p / "codes.safetensors"))
    t["codes"] = t["codes"] + 0.5
    save_file(t, str(p / "codes.safetensors"))
    with pytest.raises(PackageError, match="codes.safetensors: sha256 mismatch"):
        load_package(p)
    resign(p)
    assert not verify_package(p).ok  # other codes render other images
    save_file({"codes": t["codes"]}, str(p / "codes.safetensors"))  # the labels a conditional generator needs are gone
    resign(p)
    with pytest.raises(PackageError, match=r"codes.safetensors: tensors do not match the architecture \(missing \['labels'\]"):
        load_package(p)
    shutil.copyfile(pkg / "codes.safetensors", p / "codes.safetensors")
    m = resign(p)
    m["inputs"]["codes"]["count"] = 7
    write_manifest(p, m)
    with pytest.raises(PackageError, match=r"codes.safetensors: tensor 'codes' has shape \[6, 8\], the architecture expects \[7, 8\]"):
        load_package(p)
    m["inputs"]["codes"].update(count=6, file="README.md")
    write_manifest(p, m)
    with pytest.raises(PackageError, match="inputs.codes.file is 'README.md'; files must list exactly that one file with role 'codes'"):
        load_package(p)


def test_inversion_audit_sees_its_reconstructions(inv, holdout_images):
    from breastgan.sharing.audit import run_audit

    gen = breastgan.load_generator(inv[1])
    train = gen.reconstruct(range(6)).repeat(3, 1, 1, 1)  # codes fitted to "training images" = their reconstructions
    with pytest.raises(ValueError, match="at least 10 synthetic images; this inversion model can make 6"):
        run_audit(gen, train, holdout_images, {"n_samples": 10, "n_boot": 0, "inversion": {"enabled": False}})
