"""breastgan translate: bit depth and size kept, grey only, tiling with blended overlaps, preview, translation.json, lesion check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from breastgan.data.io import read_image, write_image
from breastgan.generation.kinds import LoadedTranslator
from breastgan.generation.translate import (
    Classifier, TranslateError, feather, lesion_preservation, tile_starts, train_classifier, translate_images, translate_tiled,
)
from breastgan.models.resnet_generator import ResnetGenerator
from breastgan.training.recipes.cyclegan import init_normal


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Identity(nn.Module):
    channels, size_multiple = 1, 4

    def forward(self, x):
        return x.clone()


class Gamma(nn.Module):
    """A translator in model range: x01 -> x01 ** 2 (a closed-form reference for the outputs)."""

    channels, size_multiple = 1, 4

    def forward(self, x):
        return ((x + 1) / 2) ** 2 * 2 - 1


def translator(a2b: nn.Module, b2a: nn.Module | None = None) -> LoadedTranslator:
    t = {"a2b": a2b.eval()}
    if b2a is not None:
        t["b2a"] = b2a.eval()
    return LoadedTranslator(t, {"components": {}}, [], torch.device("cpu"))


def resnet(norm: str, seed: int = 0) -> ResnetGenerator:
    torch.manual_seed(seed)
    return init_normal(ResnetGenerator(1, ngf=4, n_blocks=1, norm=norm), 0.2).eval()


def test_a_16_bit_ramp_survives_an_identity_generator_exactly(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    (tmp_path / "in").mkdir()
    Image.fromarray(ramp).save(tmp_path / "in" / "ramp.png")
    tifffile.imwrite(tmp_path / "in" / "ramp.tif", ramp)
    doc = translate_images(translator(Identity(), Identity()), "a2b", tmp_path / "in", tmp_path / "out")
    for name in ("ramp.png", "ramp.tif"):
        out = tmp_path / "out" / "images" / name
        back = np.asarray(Image.open(out)) if name.endswith(".png") else tifffile.imread(out)
        assert back.dtype == np.uint16 and np.array_equal(back, ramp), name  # never through 8 bits
    assert {r["bit_depth"] for r in doc["images"]} == {16}
    assert len(np.unique(np.asarray(Image.open(tmp_path / "out" / "images" / "ramp.png")))) == 65536


def test_depth_format_and_names_follow_each_input(tmp_path):
    src = tmp_path / "in"
    (src / "deep" / "er").mkdir(parents=True)
    x8 = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    write_image(src / "eight.png", x8, bit_depth=8)
    np.save(src / "deep" / "er" / "float.npy", x8)
    Image.fromarray((x8 * 65535).astype(np.uint16)).save(src / "deep" / "p16.pgm")
    translate_images(translator(Gamma()), "a2b", src, tmp_path / "out")
    img = tmp_path / "out" / "images"
    e = read_image(img / "eight.png")
    assert e.bit_depth == 8 and e.pixels.shape == (32, 48)
    assert np.abs(e.pixels - np.round(x8 * 255) ** 2 / 255**2).max() <= 0.5 / 255 + 1e-6  # gamma 2 of the 8-bit input, stored 8-bit
    f = np.load(img / "deep" / "er" / "float.npy")
    assert f.dtype == np.float32 and np.allclose(f, x8**2, atol=1e-6)
    p = read_image(img / "deep" / "p16.pgm")
    assert p.bit_depth == 16 and p.pixels.shape == (32, 48)


def test_non_square_full_frame_from_a_model_trained_on_small_crops(tmp_path):
    (tmp_path / "in").mkdir()
    x = np.random.default_rng(1).random((1024, 1280)).astype(np.float32)
    write_image(tmp_path / "in" / "frame.png", x, bit_depth=16)
    gen = translator(resnet("instance"), resnet("instance", 1))
    doc = translate_images(gen, "a2b", tmp_path / "in", tmp_path / "out", preview=1)
    out = read_image(tmp_path / "out" / "images" / "frame.png")
    assert out.pixels.shape == (1024, 1280) and out.bit_depth == 16
    assert doc["policy"]["frame"] == "full" and doc["preview"]["columns"] == ["input", "translated", "reconstructed"]
    assert doc["images"][0]["seconds"] > 0 and doc["direction"] == "a2b"
    assert json.loads((tmp_path / "out" / "translation.json").read_text()) == doc
    prev = Image.open(tmp_path / "out" / "preview.png")
    assert prev.size[0] > 2.5 * prev.size[1]  # one row, three 5:4 thumbnails


def fitted(norm: str, seed: int = 0, steps: int = 100) -> ResnetGenerator:
    """A small translator fitted to x -> x^2 on phantom patches: smooth, structured outputs (random weights saturate)."""
    from breastgan.data.phantom import generate_phantom

    torch.manual_seed(seed)
    g = ResnetGenerator(1, ngf=8, n_blocks=1, norm=norm)
    x = generate_phantom(16, size=32, seed=seed).images
    opt = torch.optim.Adam(g.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(0, 16, (4,))
        loss = (g(x[idx] * 2 - 1) - (x[idx] ** 2 * 2 - 1)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return g.eval()


def test_tiled_equals_full_frame_without_instance_norm():
    from breastgan.data.phantom import generate_phantom

    x = generate_phantom(1, size=(96, 120), seed=7).images
    gen = translator(fitted("none"))
    full = gen.translate(x, "a2b")
    tiled = translate_tiled(lambda t: gen.translate(t, "a2b"), x, 48, 24, 4)
    # stated tolerance: max 0.02, mean 1e-3 (of [0, 1]). Not exact: at a tile edge the reflection padding
    # stands in for the real neighbours, and the feathered weights there are small but not zero
    assert float((tiled - full).abs().max()) < 0.02 and float((tiled - full).abs().mean()) < 1e-3
    one_tile = translate_tiled(lambda t: gen.translate(t, "a2b"), x, 128, 0, 4)
    assert torch.equal(one_tile, full)  # a tile covering the image is the full frame


def test_tile_borders_show_no_step_on_an_instance_norm_model():
    from breastgan.data.phantom import generate_phantom

    x = generate_phantom(1, size=(128, 160), seed=8).images
    gen = translator(fitted("instance"))
    tile = 64
    blended = translate_tiled(lambda t: gen.translate(t, "a2b"), x, tile, 32, 4)[0, 0]
    abutting = translate_tiled(lambda t: gen.translate(t, "a2b"), x, tile, 0, 4)[0, 0]  # no overlap: hard tile borders
    seams = tile_starts(160, tile, 0)[1:]  # columns where abutting tiles meet (step between s-1 and s)

    def steps(im):
        d = (im[:, 1:] - im[:, :-1]).abs()
        interior = torch.ones(d.shape[1], dtype=torch.bool)
        for s in seams:
            interior[s - 3 : s + 2] = False
        return d, d[:, interior]

    d, inner = steps(blended)
    for s in seams:
        assert float(d[:, s - 1].max()) <= float(inner.max()), s  # no step larger than the interior's gradient
        assert float(d[:, s - 1].mean()) <= 1.5 * float(inner.mean()), s
    d_hard, inner_hard = steps(abutting)
    # the check can fail: per-tile instance-norm statistics do leave a seam between abutting tiles
    assert max(float(d_hard[:, s - 1].mean()) for s in seams) > 1.5 * float(inner_hard.mean())


def test_feather_and_tile_starts():
    assert tile_starts(100, 40, 10) == [0, 30, 60] and tile_starts(30, 40, 10) == [0]
    w = feather(8, 4, 0)
    assert torch.allclose(w, torch.tensor([0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1]))
    # two tiles overlapping by 4 with complementary ramps sum to 1 over the overlap
    assert torch.allclose(feather(8, 0, 4)[4:] + feather(8, 4, 0)[:4], torch.ones(4))


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "odd").mkdir()
    write_image(tmp_path / "odd" / "x.png", np.zeros((30, 32), np.float32))
    with pytest.raises(TranslateError, match=r"x.png: image is 30x32; this model needs sides that are multiples of 4"):
        translate_images(translator(Identity()), "a2b", tmp_path / "odd", tmp_path / "o1")
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb" / "c.png")
    with pytest.raises(TranslateError, match=r"c.png: colour image .* never maps colour to grey"):
        translate_images(translator(Identity()), "a2b", tmp_path / "rgb", tmp_path / "o2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(TranslateError, match=r"full: output folder is not empty"):
        translate_images(translator(Identity()), "a2b", tmp_path / "odd", tmp_path / "full")
    with pytest.raises(ValueError, match=r"unknown direction 'b2a'"):
        translate_images(translator(Identity()), "b2a", tmp_path / "odd", tmp_path / "o3")
    with pytest.raises(TranslateError, match="must be a multiple of the model's size multiple 4"):
        translate_tiled(lambda t: t, torch.zeros(1, 1, 32, 32), 30, 4, 4)


def test_lesion_preservation_closed_form():
    before = torch.tensor([0.9, 0.8, 0.2, 0.1])
    after = torch.tensor([0.3, 0.85, 0.6, 0.1])
    r = lesion_preservation(before, after)
    assert r["flip_fraction"] == 0.5 and r["flips_lesion_to_healthy"] == 1 and r["flips_healthy_to_lesion"] == 1
    assert r["mean_abs_change_p_lesion"] == pytest.approx((0.6 + 0.05 + 0.4 + 0) / 4)


def test_lesion_check_in_translation_json_with_a_classifier_trained_on_the_fly(tmp_path):
    from breastgan.data.phantom import PhantomDataset

    clf = train_classifier(PhantomDataset(n=64, size=32, seed=2), image_size=32, epochs=1, seed=0)
    assert isinstance(clf, Classifier) and clf.source["trained_on"] == "phantom"
    (tmp_path / "in").mkdir()
    ds = PhantomDataset(n=6, size=32, seed=3)
    for i in range(6):
        write_image(tmp_path / "in" / f"{i}.png", ds.images[i, 0].numpy())
    same = translate_images(translator(Identity()), "a2b", tmp_path / "in", tmp_path / "o1", classifier=clf)
    assert same["lesion_preservation"]["flip_fraction"] == 0.0 and same["lesion_preservation"]["mean_abs_change_p_lesion"] < 1e-4
    inverted = type("Invert", (Identity,), {"forward": lambda self, x: -x})()
    other = translate_images(translator(inverted), "a2b", tmp_path / "in", tmp_path / "o2", classifier=clf)
    assert other["lesion_preservation"]["n"] == 6
    assert other["lesion_preservation"]["mean_abs_change_p_lesion"] > 10 * same["lesion_preservation"]["mean_abs_change_p_lesion"] + 1e-5


def test_cli_translates_a_run_and_a_prepared_set(tmp_path):
    from handbuilt import translation_run

    from breastgan.cli import _register_all, app

    run = translation_run(tmp_path / "run", size_multiple=4)
    (tmp_path / "set" / "files").mkdir(parents=True)
    for i in range(3):
        write_image(tmp_path / "set" / "files" / f"{i}.png", np.full((16, 20), 0.1 * i, np.float32))
    (tmp_path / "set" / "manifest.csv").write_text("item_id,file,split\n0,files/0.png,train\n1,files/1.png,test\n2,files/2.png,test\n")
    _register_all()
    res = CliRunner().invoke(app, ["translate", "--run", str(run), "--direction", "b2a", "--input", str(tmp_path / "set"), "--split", "test",
                                   "--out", str(tmp_path / "out"), "--tile", "8", "--overlap", "4"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "translation.json").read_text())
    assert [r["name"] for r in doc["images"]] == ["files/1.png", "files/2.png"] and doc["policy"]["tile"] == 8
    assert read_image(tmp_path / "out" / "images" / "files" / "2.png").pixels.shape == (16, 20)
    res = CliRunner().invoke(app, ["translate", "--run", str(run), "--direction", "a2b", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nowhere: not a folder" in res.output


def test_a_utility_runs_classifier_loads_and_reproduces_its_predictions(tmp_path):
    import csv

    import yaml

    from breastgan.cli import _register_all, app
    from breastgan.data.phantom import PhantomDataset
    from breastgan.generation.translate import lesion_probabilities, load_utility_classifier

    cfg = {"name": "u", "output_dir": str(tmp_path / "out"), "classes": ["healthy", "lesion"], "image_size": 16,
           "centres": {"A": {"dataset": "phantom", "args": {"n": 80, "size": 16, "seed": 1, "lesion_fraction": 0.5}}},
           "receiving": "A", "n_added": 0, "arms": [{"kind": "none"}], "fractions": [1.0],
           "classifiers": [{"name": "cnn", "label": "CNN", "args": {"channels": [4, 8, 8, 8], "hidden": 16}, "fit": {"epochs": 1, "batch_size": 16}}],
           "seeds": [0], "device": "cpu"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    _register_all()
    res = CliRunner().invoke(app, ["utility", "--config", str(tmp_path / "exp.yaml")])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "out" / "u" / "runs").rglob("best.safetensors")).parent
    clf = load_utility_classifier(run)
    assert clf.image_size == 16 and clf.source["classifier"] == "cnn" and clf.positive == 1
    # the loaded network gives the probabilities the experiment wrote for its test images
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    ds = PhantomDataset(n=80, size=16, seed=1, lesion_fraction=0.5)
    known = [(int(r["item_id"].split("_")[1]), float(r["p_lesion"])) for r in rows]  # items are phantom{seed}_{index}
    assert known and all(r["item_id"].startswith("phantom1_") for r in rows)
    p = lesion_probabilities(clf.model, [ds.images[i] for i, _ in known], 16)
    assert torch.allclose(p, torch.tensor([q for _, q in known]), atol=1e-5)
    with pytest.raises(TranslateError, match="no best.safetensors"):
        load_utility_classifier(tmp_path)


def test_evaluate_reports_lesion_preservation_of_a_translate_output(tmp_path):
    """`evaluate --classifier` on a translate output: the same flip fraction translate recorded, in metrics.json and the report."""
    from breastgan.data.phantom import PhantomDataset
    from breastgan.evaluation import evaluate

    clf = train_classifier(PhantomDataset(n=64, size=32, seed=2), image_size=32, epochs=1, seed=0)
    (tmp_path / "in").mkdir()
    ds = PhantomDataset(n=6, size=32, seed=3)
    for i in range(6):
        write_image(tmp_path / "in" / f"{i}.png", ds.images[i, 0].numpy())
    inverted = type("Invert", (Identity,), {"forward": lambda self, x: -x})()
    doc = translate_images(translator(inverted), "a2b", tmp_path / "in", tmp_path / "o", classifier=clf)
    summary = evaluate(tmp_path / "in", tmp_path / "o" / "images", metrics=["psnr"], out_dir=tmp_path / "eval", classifier=clf, n_boot=0)
    got, want = summary["lesion_preservation"], doc["lesion_preservation"]
    assert got["n"] == 6 and got["flip_fraction"] == pytest.approx(want["flip_fraction"])
    assert got["mean_abs_change_p_lesion"] == pytest.approx(want["mean_abs_change_p_lesion"], abs=1e-6)
    assert "Lesion preservation" in (tmp_path / "eval" / "report.html").read_text()
    with pytest.raises(ValueError, match="not the output of `breastgan translate`"):
        evaluate(tmp_path / "in", tmp_path / "in", metrics=["psnr"], classifier=clf, n_boot=0)
