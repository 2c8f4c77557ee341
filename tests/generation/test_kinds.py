"""Kinds of generator from run directories: noise (model.json v2 and v1 generator.json), translation, inversion.

Runs are hand-built (handbuilt.py): model.json written with run_dir.write_model_file, weights saved
with safetensors, test-only architectures registered by the test module.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import handbuilt
from handbuilt import TinyTranslator, inversion_run, make_run, translation_run, translator

from breastgan.generation import KINDS, GeneratorLoadError, LoadedGenerator, LoadedInversion, LoadedTranslator, load_generator
from breastgan.generation import kinds as kinds_mod
from breastgan.generation.latents import CHUNK, latents_for, synthetic_images

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def test_kinds_are_registered():
    assert KINDS.names() == ["inversion", "noise", "translation"]
    assert KINDS.get("translation") is LoadedTranslator and KINDS.get("noise") is LoadedGenerator


# -- noise ----------------------------------------------------------------------------------------
@pytest.fixture
def legacy_run(tmp_path):
    dst = tmp_path / "run_v1"
    shutil.copytree(LEGACY / "run_v1", dst)
    return dst


def test_v2_model_file_and_v1_generator_file_give_the_same_images(legacy_run, tmp_path):
    from breastgan.run_dir import read_model_file, write_model_file

    expected = load_file(str(LEGACY / "expected_images.safetensors"))
    v1 = load_generator(legacy_run)
    torch.testing.assert_close(v1.sample(6, seed=11), expected["run"], atol=1e-6, rtol=0)
    model = read_model_file(legacy_run)  # the v1 file read as kind 'noise'
    v2_run = tmp_path / "run_v2"
    shutil.copytree(legacy_run, v2_run)
    (v2_run / "generator.json").unlink()
    write_model_file(v2_run, model)
    v2 = load_generator(v2_run)
    assert isinstance(v2, LoadedGenerator) and v2.kind == "noise" and v2.class_names == ["healthy", "lesion"]
    torch.testing.assert_close(v2.sample(6, seed=11), expected["run"], atol=1e-6, rtol=0)
    torch.testing.assert_close(v2.synthesize(6, seed=11), expected["run"], atol=1e-6, rtol=0)
    torch.testing.assert_close(load_generator(v2_run, snapshots="all").sample(6, seed=11), expected["run_snapshots"], atol=1e-6, rtol=0)
    torch.testing.assert_close(load_generator(v2_run, ema=False).sample(6, seed=11), expected["run_raw"], atol=1e-6, rtol=0)
    assert v2.capacity is None and v2.describe() == {"arch": "dcgan", "args": model.components["generator"].args}


def test_checkpoint_directory_passed_directly(legacy_run):
    ckpt = legacy_run / "checkpoints" / "step_00000008"
    a, b = load_generator(legacy_run), load_generator(ckpt)
    assert b.sources == [str(ckpt / "generator_ema.safetensors")]
    assert torch.equal(a.sample(3, seed=1), b.sample(3, seed=1))


def test_corrupt_checkpoint_record_is_named(legacy_run):
    ckpt = legacy_run / "checkpoints" / "step_00000008"
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(GeneratorLoadError, match="step_00000008/meta.json: not a valid checkpoint record"):
        load_generator(ckpt)


def test_a_checkpoint_is_described_by_its_own_model_file(tmp_path):
    """After a structure change the run's model.json describes the newest checkpoints only."""
    G_old = handbuilt.dcgan(1)
    run = make_run(tmp_path / "r", kind="noise", components={"generator": ("dcgan", {"image_size": 32, "latent_dim": 8, "base_width": 8}, "generator")},
                   weights={"generator": G_old}, inputs={"latent": {"dim": 8}}, record_model_in_checkpoint=True)
    from breastgan.run_dir import ComponentSpec, ModelFile, write_model_file

    write_model_file(run, ModelFile(kind="noise", components={"generator": ComponentSpec(arch="dcgan", args={"image_size": 64, "latent_dim": 8,
                                                                                                            "base_width": 8}, module="generator")},
                                    inputs={"latent": {"dim": 8}}))
    gen = load_generator(run)  # the checkpoint's own file (32 px), not the run's newer one (64 px)
    assert gen.image_size == (32, 32) and "meta.json (field 'model')" in gen.meta["model_file"]
    meta = json.loads((run / "checkpoints" / "step_00000001" / "meta.json").read_text())
    del meta["model"]  # a checkpoint without its own record is described by the run's file: 64 px weights expected
    (run / "checkpoints" / "step_00000001" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GeneratorLoadError, match="generator.safetensors: tensors do not match the architecture"):
        load_generator(run)


def test_run_weights_header_is_checked_before_any_tensor_is_loaded(legacy_run, tmp_path, monkeypatch):
    weights = legacy_run / "checkpoints" / "step_00000008" / "generator_ema.safetensors"
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    weights.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(GeneratorLoadError, match=r"generator_ema.safetensors: not a safetensors file"):
        load_generator(legacy_run)
    assert not marker.exists()
    # a real safetensors file with one wrong shape: refused from its header, before safetensors reads a tensor
    sd = load_file(str(legacy_run / "checkpoints" / "step_00000008" / "generator.safetensors"))
    first = next(k for k, v in sd.items() if v.is_floating_point())
    sd[first] = torch.zeros(3, 3)
    save_file(sd, str(weights))
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load", lambda *a, **k: pytest.fail("tensors were read before the header was checked"))
    with pytest.raises(GeneratorLoadError, match=f"tensor {first!r} has shape \\[3, 3\\]"):
        load_generator(legacy_run)


def test_model_file_consistency_is_checked_before_anything_is_built(tmp_path, monkeypatch):
    args = {"image_size": 32, "latent_dim": 8, "base_width": 8}
    run = make_run(tmp_path / "r", kind="noise", components={"generator": ("dcgan", args, "generator")}, weights={"generator": handbuilt.dcgan(1)},
                   inputs={"latent": {"dim": 9}})
    monkeypatch.setattr(kinds_mod.PlannedComponent, "build", lambda self: pytest.fail("built before the model file was checked"))
    with pytest.raises(GeneratorLoadError, match="model.json: inputs.latent.dim is 9 but components.generator.args give 8"):
        load_generator(run)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(kind="diffusion"), "kind 'diffusion' is not a breastgan generator kind; available: inversion, noise, translation"),
    (lambda m: m["components"].update(g2=m["components"].pop("generator")), r"components: \['g2'\] is not a role of kind 'noise'"),
    (lambda m: m["inputs"].pop("latent"), "inputs: kind 'noise' needs inputs.latent"),
    (lambda m: m["inputs"].update(image={"channels": 1}), "inputs.image is not used by kind 'noise'"),
    (lambda m: m["components"]["generator"].update(arch="nope"), "components.generator.arch 'nope' is not a breastgan generator"),
    (lambda m: m["components"]["generator"].update(arch="test-translator", args={}), "is an image-to-image translator; kind 'noise' needs"),
    (lambda m: m["components"]["generator"]["args"].update(hook=1), "components.generator.args.hook: unknown option for 'dcgan'"),
    (lambda m: m["components"]["generator"].update(module="g_x"), r"holds the modules \['generator'\], not 'g_x'"),
    (lambda m: m.update(output={"channels": 3}), "output.channels is 3 but components.generator.args give 1"),
    (lambda m: m.update(output={"image_size": [64, 64]}), r"output.image_size is \[64, 64\] but components.generator.args give \(32, 32\)"),
    (lambda m: m.update(class_names=["a", "b"]), r"class_names \(count\) is 2 but components.generator.args give 0"),
])
def test_model_file_errors_name_the_field(tmp_path, change, message):
    args = {"image_size": 32, "latent_dim": 8, "base_width": 8}
    run = make_run(tmp_path / "r", kind="noise", components={"generator": ("dcgan", args, "generator")}, weights={"generator": handbuilt.dcgan(1)},
                   inputs={"latent": {"dim": 8}})
    m = json.loads((run / "model.json").read_text())
    change(m)
    (run / "model.json").write_text(json.dumps(m))
    with pytest.raises(GeneratorLoadError, match=message):
        load_generator(run)


def test_non_noise_kinds_have_no_snapshot_ensembles(tmp_path):
    run = translation_run(tmp_path / "t")
    with pytest.raises(GeneratorLoadError, match="snapshot ensembles are for kind 'noise'; this run's kind is 'translation'"):
        load_generator(run, snapshots="all")


# -- translation ----------------------------------------------------------------------------------
@pytest.fixture
def trun(tmp_path):
    return translation_run(tmp_path / "trun", size_multiple=4)


def test_translation_run_loads_both_directions_and_translates(trun):
    gen = load_generator(trun)
    assert isinstance(gen, LoadedTranslator) and gen.kind == "translation" and gen.directions == ["a2b", "b2a"]
    assert gen.channels == 1 and gen.size_multiple == 4 and gen.capacity == 0
    x = synthetic_images(0, 5, 1, 32, 32, seed=0)
    y = gen.translate(x, "a2b")
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= float(y.min()) and float(y.max()) <= 1
    # the EMA translator of each direction, mapped [0, 1] -> [-1, 1] -> [0, 1]
    ema_a2b = translator(20, size_multiple=4)
    with torch.no_grad():
        want = (ema_a2b(x * 2 - 1).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(y, want)
    assert not torch.allclose(y, gen.translate(x, "b2a"))
    raw = load_generator(trun, ema=False)
    with torch.no_grad():
        torch.testing.assert_close(raw.translate(x, "a2b"), (translator(10, size_multiple=4)(x * 2 - 1).clamp(-1, 1) + 1) / 2)
    assert sorted(Path(s).name for s in gen.sources) == ["g_a2b_ema.safetensors", "g_b2a_ema.safetensors"]
    assert gen.translate(torch.rand(2, 1, 8, 12), "b2a").shape == (2, 1, 8, 12)  # any size the multiple allows


def test_translation_errors_are_clear(trun):
    gen = load_generator(trun)
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"unknown direction 'c2d'; this translator has \['a2b', 'b2a'\]"):
        gen.translate(x, "c2d")
    with pytest.raises(ValueError, match=r"takes 1-channel images, got 3 channel\(s\)"):
        gen.translate(torch.rand(2, 3, 32, 32), "a2b")
    with pytest.raises(ValueError, match="image sides must be multiples of 4 for this architecture, got 30x32"):
        gen.translate(torch.rand(2, 1, 30, 32), "a2b")
    with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 1\]"):
        gen.translate(x * 2 - 1, "a2b")
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) tensor"):
        gen.translate(x[0], "a2b")
    with pytest.raises(ValueError, match="bind them first"):
        gen.synthesize(2)
    with pytest.raises(ValueError, match="unconditional|labels apply to noise"):
        gen.save("unused", n=2, labels=1)


def test_bound_translator_synthesizes_translations_per_index(trun):
    gen = load_generator(trun)
    x = synthetic_images(0, 3, 1, 32, 32, seed=7)
    one = gen.bind(x, "b2a")
    assert one.capacity == 3 and torch.equal(one.synthesize(3), gen.translate(x, "b2a"))
    both = gen.bind(x)  # every direction: image i is input i mod 3 along direction i // 3
    assert both.capacity == 6
    allx = both.synthesize(6, seed=123)
    torch.testing.assert_close(allx, torch.cat([gen.translate(x, "a2b"), gen.translate(x, "b2a")]))
    torch.testing.assert_close(both.synthesize_range(2, 5), allx[2:5])
    with pytest.raises(ValueError, match=r"can make 6 images, 7 were asked for \(3 bound input images x 2 direction\(s\)\)"):
        both.synthesize(7)
    assert gen.capacity == 0  # binding returns a new model


def test_translator_that_changes_the_shape_is_caught(tmp_path):
    run = make_run(tmp_path / "c", kind="translation", components={"a2b": ("test-cropper", {}, "g")}, weights={"g": TinyTranslator(1, 4, 1)},
                   inputs={"image": {"channels": 1}})
    gen = load_generator(run)
    with pytest.raises(ValueError, match="returned shape .* a translator must keep the shape"):
        gen.translate(torch.rand(1, 1, 8, 8), "a2b")


def test_translation_model_file_is_checked_before_building(tmp_path):
    run = translation_run(tmp_path / "t")
    m = json.loads((run / "model.json").read_text())
    m["inputs"]["image"]["channels"] = 3
    m["output"]["channels"] = 3
    (run / "model.json").write_text(json.dumps(m))
    before = TinyTranslator.built
    with pytest.raises(GeneratorLoadError, match="inputs.image.channels is 3 but components.a2b.args give 1"):
        load_generator(run)
    m["inputs"]["image"] = {"channels": 1, "size_multiple": 8}
    m["output"]["channels"] = 1
    (run / "model.json").write_text(json.dumps(m))
    with pytest.raises(GeneratorLoadError, match="inputs.image.size_multiple is 8 but components.a2b.args give 1"):
        load_generator(run)
    m["inputs"]["image"] = {"channels": 1}
    m["components"]["a2b"]["arch"] = "dcgan"
    (run / "model.json").write_text(json.dumps(m))
    with pytest.raises(GeneratorLoadError, match="components.a2b.arch 'dcgan' is a noise-to-image generator; kind 'translation' needs"):
        load_generator(run)
    assert TinyTranslator.built == before


def test_one_direction_translator(tmp_path):
    gen = load_generator(translation_run(tmp_path / "one", directions=("b2a",), with_ema=False))
    assert gen.directions == ["b2a"]
    with pytest.raises(ValueError, match=r"unknown direction 'a2b'; this translator has \['b2a'\]"):
        gen.bind(torch.rand(1, 1, 4, 4), "a2b")


# -- inversion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("conditional", [False, True])
def test_inversion_run_reconstructs_its_codes(tmp_path, conditional):
    run, G, codes = inversion_run(tmp_path / "inv", count=5, conditional=conditional)
    gen = load_generator(run)
    assert isinstance(gen, LoadedInversion) and gen.kind == "inversion" and gen.count == 5 == gen.capacity
    rec = gen.reconstruct([0, 3])
    with torch.no_grad():
        labels = codes["labels"][[0, 3]] if conditional else None
        want = (G(codes["codes"][[0, 3]], labels).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(rec, want)
    torch.testing.assert_close(gen.synthesize(5, seed=9), gen.reconstruct(range(5)))
    torch.testing.assert_close(gen.synthesize_range(1, 4), gen.reconstruct([1, 2, 3]))
    with pytest.raises(ValueError, match=r"code index out of range 0..4"):
        gen.reconstruct([5])
    with pytest.raises(ValueError, match="can make 5 images, 6 were asked for"):
        gen.synthesize(6)


def test_inversion_codes_are_checked(tmp_path):
    run, _, codes = inversion_run(tmp_path / "inv", count=5)
    f = run / "checkpoints" / "step_00000001" / "codes.safetensors"
    save_file({"codes": torch.randn(4, 8)}, str(f))
    with pytest.raises(GeneratorLoadError, match=r"codes.safetensors: tensor 'codes' has shape \[4, 8\], the architecture expects \[5, 8\]"):
        load_generator(run)
    save_file({"codes": torch.full((5, 8), float("nan"))}, str(f))
    with pytest.raises(GeneratorLoadError, match="NaN/Inf"):
        load_generator(run)
    f.unlink()
    with pytest.raises(GeneratorLoadError, match=r"codes.safetensors: missing \(fitted codes"):
        load_generator(run)
    m = json.loads((run / "model.json").read_text())
    del m["inputs"]["codes"]
    (run / "model.json").write_text(json.dumps(m))
    with pytest.raises(GeneratorLoadError, match="kind 'inversion' needs inputs.codes"):
        load_generator(run)


def test_fit_codes_reconstructs_images_the_generator_can_make(tmp_path):
    from breastgan.generation import fit_codes

    run, G, _ = inversion_run(tmp_path / "inv")
    noise = LoadedGenerator([G], {"arch": "dcgan", "args": {}}, ["test"], torch.device("cpu"))
    targets = noise.sample(3, seed=5)
    inv = fit_codes(noise, targets, steps=60, lr=0.1, restarts=1, seed=0)
    assert inv.count == 3 and inv.codes.shape == (3, 8)
    err_fit = float(((inv.reconstruct([0, 1, 2]) - targets) ** 2).mean())
    random_codes = LoadedInversion(G, torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), None, {}, [], torch.device("cpu"))
    err_random = float(((random_codes.reconstruct([0, 1, 2]) - targets) ** 2).mean())
    assert err_fit < 0.5 * err_random, (err_fit, err_random)
    assert inv.meta["fit_mse"] == pytest.approx([float(((inv.reconstruct([i]) - targets[i : i + 1]) ** 2).mean()) for i in range(3)], rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match=r"expected \(N, 1, 32, 32\)"):
        fit_codes(noise, torch.rand(2, 1, 16, 16))


# -- sources and output ---------------------------------------------------------------------------
def test_source_loaders_are_a_registry(tmp_path):
    from breastgan.generation.source_loaders import SOURCE_LOADERS, find_source_loader, register_source_loader, source_kinds

    (tmp_path / "x.toy").write_text("toy")
    calls = []
    register_source_loader("toy-for-tests", lambda p: p.suffix == ".toy", lambda p, **kw: calls.append((p, kw)) or "loaded",
                           summary="test only: files ending in .toy")
    try:
        assert load_generator(tmp_path / "x.toy", checkpoint=3) == "loaded" and calls[0][1]["checkpoint"] == 3
        assert ("package", SOURCE_LOADERS.entry("package").summary) in source_kinds()  # registered by breastgan.sharing, by name
        assert find_source_loader(tmp_path) is None
        with pytest.raises(GeneratorLoadError, match="not a breastgan run directory"):
            load_generator(tmp_path)
        with pytest.raises(GeneratorLoadError, match="does not exist"):
            load_generator(tmp_path / "nowhere")
    finally:
        SOURCE_LOADERS._entries.pop("toy-for-tests")


def test_generated_image_folder_is_not_taken_for_a_package(legacy_run, tmp_path):
    from breastgan.generation.source_loaders import find_source_loader

    load_generator(legacy_run).save(tmp_path / "out", n=2)
    assert (tmp_path / "out" / "manifest.json").is_file() and find_source_loader(tmp_path / "out") is None


def test_package_loader_is_registered_by_sharing_without_generation_importing_it():
    code = ("import sys, breastgan.generation as g; assert 'breastgan.sharing' not in sys.modules; "
            "from breastgan.generation.source_loaders import source_kinds; names = [n for n, _ in source_kinds()]; "
            "assert 'breastgan.sharing' in sys.modules and names == ['package', 'run'], names")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synthetic_images_are_per_index_and_deterministic():
    a = synthetic_images(0, CHUNK + 10, 2, 16, 24, seed=3)
    assert a.shape == (CHUNK + 10, 2, 16, 24) and a.dtype == torch.float32 and 0 <= float(a.min()) and float(a.max()) <= 1
    torch.testing.assert_close(synthetic_images(CHUNK - 2, CHUNK + 4, 2, 16, 24, seed=3), a[CHUNK - 2 : CHUNK + 4], atol=0, rtol=0)
    assert not torch.equal(synthetic_images(0, 4, 2, 16, 24, seed=4), a[:4])
    assert float((a[:, :, 1:] - a[:, :, :-1]).abs().mean()) < 0.1  # smooth fields, not white noise
    z, _ = latents_for(0, 4, 16, seed=3)  # another random stream than the latents of the same seed
    assert not torch.allclose(z.flatten()[:16], synthetic_images(0, 1, 1, 16, 16, seed=3).flatten()[:16])


def test_translations_write_as_grey_png_and_npy(trun, tmp_path):
    gen = load_generator(trun).bind(synthetic_images(0, 3, 1, 32, 32, seed=1), "a2b")
    records = gen.save(tmp_path / "png")
    assert len(records) == 3
    manifest = json.loads((tmp_path / "png" / "manifest.json").read_text())
    assert manifest["generator"]["kind"] == "translation" and manifest["generator"]["bound"] == {"inputs": 3, "directions": ["a2b"]}
    gen.save(tmp_path / "npy", fmt="npy")
    arr = np.load(tmp_path / "npy" / "img_00000001.npy")
    np.testing.assert_array_equal(arr, gen.synthesize(3)[1, 0].numpy())
