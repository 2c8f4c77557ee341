import json

import numpy as np
import pytest
import torch
from PIL import Image

import breastgan
from breastgan.data.io import read_image
from breastgan.generation.latents import CHUNK, latents_for


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = {
        "data": {"source": {"dataset": "phantom", "n": 128, "size": 32}},
        "model": {"generator": {"arch": "dcgan", "base_width": 8}, "discriminator": {"arch": "dcgan", "base_width": 8}},
        "train": {"batch_size": 16, "epochs": 2, "snapshot_every_epochs": 1, "checkpoint_every": 4, "sample_every": 100, "progress": False, "keep_last": 5},
    }
    return breastgan.train(cfg, run_dir=tmp_path_factory.mktemp("gen") / "run").run_dir


def test_latents_depend_only_on_seed_and_index():
    full, _ = latents_for(0, 3 * CHUNK, 8, seed=4)
    part, _ = latents_for(CHUNK - 5, 2 * CHUNK + 7, 8, seed=4)
    assert torch.equal(part, full[CHUNK - 5 : 2 * CHUNK + 7])
    other, _ = latents_for(0, 10, 8, seed=5)
    assert not torch.equal(other, full[:10])


def test_sample_is_deterministic_and_in_range(run):
    gen = breastgan.load_generator(run)
    a = gen.sample(20, seed=3)
    assert a.shape == (20, 1, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, gen.sample(20, seed=3))
    assert not torch.equal(a, gen.sample(20, seed=4))
    # any sub-range reproduces the same images, whatever the batch size
    assert torch.allclose(gen.sample_range(7, 19, seed=3, batch_size=5), a[7:19], atol=1e-6)


def test_checkpoint_selection(run):
    latest = breastgan.load_generator(run)
    first = breastgan.load_generator(run, checkpoint=4)
    raw = breastgan.load_generator(run, ema=False)
    assert not torch.equal(latest.sample(4), first.sample(4))
    assert not torch.equal(latest.sample(4), raw.sample(4))
    with pytest.raises(ValueError, match="no checkpoint for step 3"):
        breastgan.load_generator(run, checkpoint=3)
    with pytest.raises(ValueError, match="no best checkpoint"):
        breastgan.load_generator(run, checkpoint="best")


def test_snapshot_ensemble_draws_from_every_snapshot(run):
    ens = breastgan.load_generator(run, snapshots="all")
    assert len(ens.models) == 2
    x = ens.sample(6, seed=0)
    one = breastgan.load_generator(run, snapshots=[1]).sample(6, seed=0)
    two = breastgan.load_generator(run, snapshots=[2]).sample(6, seed=0)
    # image i comes from snapshot i mod 2
    # (allclose: a different batch composition may change float summation order in the convolutions)
    assert torch.allclose(x[0::2], one[0::2], atol=1e-6) and torch.allclose(x[1::2], two[1::2], atol=1e-6)
    assert not torch.allclose(one, two, atol=1e-3)
    with pytest.raises(ValueError, match=r"no snapshot for epoch\(s\) \[7\]"):
        breastgan.load_generator(run, snapshots=[7])


@pytest.mark.parametrize("fmt,bits", [("png", 16), ("png", 8), ("npy", 32)])
def test_save_formats_keep_precision(run, tmp_path, fmt, bits):
    gen = breastgan.load_generator(run)
    records = gen.save(tmp_path, n=5, seed=2, fmt=fmt, bit_depth=bits if fmt == "png" else 16)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["count"] == 5 == len(records) and [r["index"] for r in manifest["files"]] == list(range(5))
    expected = gen.sample(5, seed=2)
    for r in records:
        decoded = read_image(tmp_path / r["file"])
        assert decoded.bit_depth == bits
        tol = {16: 1 / 65535, 8: 1 / 255, 32: 0}[bits]
        assert np.abs(decoded.pixels - expected[r["index"], 0].numpy()).max() <= tol / 2 + 1e-7
    if fmt == "png" and bits == 16:
        assert Image.open(tmp_path / records[0]["file"]).mode.startswith("I;16")


def test_unconditional_rejects_labels(run):
    with pytest.raises(ValueError, match="unconditional"):
        breastgan.load_generator(run).sample(2, labels=1)


def test_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="not a breastgan run"):
        breastgan.load_generator(tmp_path)


def _three_channel_generator():
    from breastgan.generation import LoadedGenerator
    from breastgan.models.registry import GENERATORS

    args = GENERATORS.entry("dcgan").validate_args({"image_size": 32, "channels": 3, "latent_dim": 8, "base_width": 8}).model_dump()
    torch.manual_seed(0)
    return LoadedGenerator([GENERATORS.get("dcgan")(**args).eval()], {"arch": "dcgan", "args": args}, ["test"], torch.device("cpu"))


def test_multi_channel_images_are_refused_for_png_and_kept_whole_in_npy(tmp_path):
    gen = _three_channel_generator()
    with pytest.raises(ValueError, match="PNG output holds 1-channel \\(grey\\) images; this model makes 3-channel images: use format 'npy'"):
        gen.save(tmp_path / "png", n=2, fmt="png")
    assert not (tmp_path / "png").exists()  # refused before anything was written
    records = gen.save(tmp_path / "npy", n=2, fmt="npy")
    expected = gen.sample(2, seed=0)
    for r in records:
        arr = np.load(tmp_path / "npy" / r["file"])
        assert arr.shape == (3, 32, 32) and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, expected[r["index"]].numpy())
    assert json.loads((tmp_path / "npy" / "manifest.json").read_text())["channels"] == 3
    from breastgan.generation.distributed import generate_distributed

    with pytest.raises(ValueError, match="3-channel images"):
        generate_distributed(gen, tmp_path / "dist", n=2, fmt="png")


def test_grey_images_stay_grey_png(run, tmp_path):
    gen = breastgan.load_generator(run)
    gen.save(tmp_path, n=2, seed=1, fmt="png", bit_depth=8)
    with Image.open(tmp_path / "img_00000000.png") as im:
        assert im.mode == "L" and im.size == (32, 32)
