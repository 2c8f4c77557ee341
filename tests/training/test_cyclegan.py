"""CycleGAN and pix2pix recipes: a known domain shift is learnt (unpaired and paired), losses, grids, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from breastgan.config import ConfigError
from breastgan.data.io import write_image
from breastgan.data.paired import PairedDataError, PairedDataset
from breastgan.data.phantom import generate_phantom
from breastgan.generation import load_generator
from breastgan.models.resnet_generator import ResnetGenerator
from breastgan.models.unet import UNetGenerator
from breastgan.training.recipes.cyclegan import init_normal
from breastgan.training.trainer import train

S = 16  # patch side: small enough for CPU CI, a multiple of the U-Net's 2**4


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # module scope: it must be in force while the module-scoped training fixture runs
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only adds contention
    yield
    torch.set_num_threads(n)


def shift(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The known domain shift: a fixed monotone intensity transform (gamma 2, contrast 0.7, offset 0.15) plus noise."""
    g = torch.Generator().manual_seed(seed)
    return (0.15 + 0.7 * x.clamp(0, 1) ** 2.0 + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((x - y) ** 2).mean()))


def write_folder(root: Path, images: torch.Tensor) -> Path:
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        write_image(root / f"{i:03d}.png", im[0].numpy(), bit_depth=16)
    return root


def base_cfg(**train) -> dict:
    return {"loss": {"name": "lsgan"}, "optim": {"lr_g": 2e-3, "lr_d": 2e-3},
            "train": {"batch_size": 4, "log_every": 10, "sample_every": 10_000, "checkpoint_every": 10_000, "progress": False,
                      "device": "cpu", **train}}


def cyclegan_cfg(b_root: Path, **recipe) -> dict:
    cfg = base_cfg(max_steps=60, sample_every=60)
    cfg.update(name="cg", recipe={"name": "cyclegan", "domain_b": {"dataset": "image_folder", "root": str(b_root)}, "pool_size": 8,
                                  "epochs_constant": 1000, "epochs_decay": 1000, **recipe},
               data={"source": {"dataset": "phantom", "n": 64, "size": S, "seed": 1}},
               model={"generator": {"arch": "resnet_generator", "ngf": 4, "n_blocks": 1},
                      "discriminator": {"arch": "patchgan", "ndf": 4, "n_layers": 1}})
    return cfg


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    # unpaired: domain B holds *other* phantom patches than domain A, shifted
    b_root = write_folder(root / "b", shift(generate_phantom(64, size=S, seed=11).images, 5))
    test_a = generate_phantom(16, size=S, seed=99).images  # held out: neither domain saw these
    return root, b_root, test_a, shift(test_a, 6)


@pytest.fixture(scope="module")
def cyclegan_run(domains):
    root, b_root, _, _ = domains
    result = train(cyclegan_cfg(b_root), run_dir=root / "run")
    return result.run_dir


def test_cyclegan_learns_a_known_unpaired_domain_shift(cyclegan_run, domains):
    _, _, test_a, truth = domains
    gen = load_generator(cyclegan_run)
    assert gen.kind == "translation" and gen.directions == ["a2b", "b2a"] and gen.size_multiple == 4
    torch.manual_seed(0)
    untrained = init_normal(ResnetGenerator(1, 4, 1)).eval()
    with torch.no_grad():
        p_untrained = psnr((untrained(test_a * 2 - 1) + 1) / 2, truth)
    p_identity, p_trained = psnr(test_a, truth), psnr(gen.translate(test_a, "a2b"), truth)
    print(f"PSNR to the shifted truth: trained {p_trained:.2f} dB, identity {p_identity:.2f} dB, untrained {p_untrained:.2f} dB")
    assert p_trained > p_identity + 2 and p_trained > p_untrained + 2, (p_trained, p_identity, p_untrained)


def test_cyclegan_logs_each_loss_and_the_cycle_loss_falls(cyclegan_run):
    rows = [json.loads(line) for line in (cyclegan_run / "logs" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "cycle_a" in r]
    for key in ("loss_g_ab", "loss_g_ba", "cycle_a", "cycle_b", "identity_ab", "identity_ba", "loss_d_a", "loss_d_b", "pool_from_buffer", "lr/g", "lr/d"):
        assert key in rows[-1], key
    first = (rows[0]["cycle_a"] + rows[0]["cycle_b"]) / 2
    last = (rows[-1]["cycle_a"] + rows[-1]["cycle_b"]) / 2
    assert last < 0.7 * first, (first, last)
    assert rows[-1]["pool_from_buffer"] > 0  # the 8-image buffers are full after 2 steps of 4


def test_cyclegan_run_files_describe_a_translation_model(cyclegan_run):
    model = json.loads((cyclegan_run / "model.json").read_text())
    assert model["kind"] == "translation" and set(model["components"]) == {"a2b", "b2a"}
    assert model["components"]["a2b"]["module"] == "g_ab" and model["inputs"]["image"] == {"channels": 1, "size_multiple": 4}
    assert sorted(p.name for p in (cyclegan_run / "checkpoints").iterdir() if p.is_dir())  # checkpoints written
    ckpt = sorted((cyclegan_run / "checkpoints").glob("step_*"))[-1]
    assert {p.stem for p in ckpt.glob("*.safetensors")} == {"g_ab", "g_ba", "d_a", "d_b"}  # EMA off by default
    from PIL import Image

    grid = Image.open(sorted((cyclegan_run / "samples").glob("*.png"))[-1])
    assert grid.size == (6 * (S + 2) + 2, 6 * (S + 2) + 2)  # 6 rows A, A->B, A->B->A, B, B->A, B->A->B of 6


def test_pix2pix_learns_the_paired_shift(tmp_path):
    a = generate_phantom(64, size=S, seed=1).images
    write_folder(tmp_path / "A", a)
    write_folder(tmp_path / "B", shift(a, 5))
    cfg = base_cfg(max_steps=60)
    cfg.update(name="p2p", recipe={"name": "pix2pix", "epochs_constant": 1000, "epochs_decay": 1000},
               data={"source": {"dataset": "paired", "folder_a": str(tmp_path / "A"), "folder_b": str(tmp_path / "B")}},
               model={"generator": {"arch": "unet", "ngf": 4, "depth": 4}, "discriminator": {"arch": "patchgan", "ndf": 4, "n_layers": 1, "norm": "batch"}})
    cfg["loss"] = {"name": "nonsaturating"}
    run = train(cfg, run_dir=tmp_path / "run").run_dir
    test_a = generate_phantom(16, size=S, seed=99).images
    truth = shift(test_a, 6)
    gen = load_generator(run)
    assert gen.directions == ["a2b"] and gen.size_multiple == 16
    torch.manual_seed(0)
    untrained = init_normal(UNetGenerator(1, 4, 4)).eval()
    with torch.no_grad():
        p_untrained = psnr((untrained(test_a * 2 - 1) + 1) / 2, truth)
    p_identity, p_trained = psnr(test_a, truth), psnr(gen.translate(test_a, "a2b"), truth)
    print(f"PSNR to the shifted truth: trained {p_trained:.2f} dB, identity {p_identity:.2f} dB, untrained {p_untrained:.2f} dB")
    assert p_trained > p_identity + 2 and p_trained > p_untrained + 2, (p_trained, p_identity, p_untrained)
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g_adv", "l1"} <= set(rows[-1])


def test_cyclegan_resume_is_exact_including_the_buffer(domains, tmp_path):
    _, b_root, _, _ = domains

    def cfg(steps):
        c = cyclegan_cfg(b_root, pool_size=3)
        c["train"].update(batch_size=2, max_steps=steps, checkpoint_every=3, log_every=1)
        return c

    straight = train(cfg(6), run_dir=tmp_path / "straight").run_dir
    part = train(cfg(3), run_dir=tmp_path / "part").run_dir
    state3 = torch.load(part / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
    assert len(state3["recipe"]["pool_a"]["images"]) == 3  # the buffer is full (and used) before the cut
    train(resume=part, overrides=["train.max_steps=6"])
    for name in ("g_ab", "g_ba", "d_a", "d_b"):
        a = load_file(str(straight / "checkpoints" / "step_00000006" / f"{name}.safetensors"))
        b = load_file(str(part / "checkpoints" / "step_00000006" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa = torch.load(straight / "checkpoints" / "step_00000006" / "training_state.pt", weights_only=True)["recipe"]
    sb = torch.load(part / "checkpoints" / "step_00000006" / "training_state.pt", weights_only=True)["recipe"]
    assert torch.equal(sa["pool_a"]["images"], sb["pool_a"]["images"]) and torch.equal(sa["pool_b"]["images"], sb["pool_b"]["images"])


def test_config_errors_are_clear(domains, tmp_path):
    _, b_root, _, _ = domains
    from breastgan.config import RunConfig, load_config

    c = cyclegan_cfg(b_root)
    del c["loss"]
    resolved = load_config(c)
    assert resolved.loss.name == "lsgan"  # the recipe's default, written into the saved config
    assert RunConfig.model_validate(yaml.safe_load(resolved.to_yaml())).loss.name == "lsgan"
    assert load_config({"train": {"max_steps": 1}}).loss.name == "nonsaturating"  # the GAN recipe keeps the run-wide default
    c = cyclegan_cfg(b_root)
    c["model"]["generator"] = {"arch": "dcgan"}
    with pytest.raises(ConfigError, match=r"'dcgan' is not an image-to-image translator"):
        train(c, run_dir=tmp_path / "r2")
    c = cyclegan_cfg(b_root)
    c["recipe"].pop("domain_b")
    with pytest.raises(Exception, match="domain_b"):
        train(c, run_dir=tmp_path / "r3")


def test_paired_folders_must_match_by_name(tmp_path):
    a = generate_phantom(3, size=S, seed=1).images
    write_folder(tmp_path / "A", a)
    write_folder(tmp_path / "B", a[:2])
    with pytest.raises(PairedDataError, match=r"only in folder_a \['002.png'\]"):
        PairedDataset(folder_a=str(tmp_path / "A"), folder_b=str(tmp_path / "B"))
    (tmp_path / "pairs.csv").write_text("a,b\nA/000.png,B/000.png\nA/001.png,B/missing.png\n")
    with pytest.raises(PairedDataError, match=r"line 3, column b: .*missing.png not found"):
        PairedDataset(manifest=str(tmp_path / "pairs.csv"))
    (tmp_path / "pairs.csv").write_text("a,b\nA/000.png,B/000.png\nA/001.png,B/001.png\n")
    ds = PairedDataset(manifest=str(tmp_path / "pairs.csv"))
    assert ds.info.channels == 2 and len(ds) == 2 and torch.allclose(ds.images[1, 0], a[1, 0], atol=1 / 65535)


def test_a_cyclegan_run_exports_verifies_and_translates_as_a_package(cyclegan_run, domains, tmp_path):
    from typer.testing import CliRunner

    from breastgan.cli import _register_all, app

    _register_all()
    runner = CliRunner()
    pkg = tmp_path / "pkg"
    res = runner.invoke(app, ["export", "--run", str(cyclegan_run), "--out", str(pkg), "--force", "--reason", "test: no held-out set"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["kind"] == "translation" and manifest["inputs"]["image"]["size_multiple"] == 4
    res = runner.invoke(app, ["verify", str(pkg)])
    assert res.exit_code == 0 and "VERIFIED" in res.output, res.output
    _, b_root, _, _ = domains
    res = runner.invoke(app, ["translate", "--run", str(pkg), "--direction", "b2a", "--input", str(b_root), "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "t" / "images").glob("*.png"))) == 64
    res = runner.invoke(app, ["hub", "add", str(pkg), "--hub", str(tmp_path / "hub")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["hub", "search", "--kind", "translation", "--hub", str(tmp_path / "hub")], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "cg-" in res.output, res.output


def test_cyclegan_killed_and_resumed_equals_an_uninterrupted_run(domains, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    _, b_root, _, _ = domains
    cfg = cyclegan_cfg(b_root, pool_size=3)
    cfg["train"].update(batch_size=2, max_steps=30, checkpoint_every=3, keep_last=20)
    straight = train(cfg, run_dir=tmp_path / "straight").run_dir
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cli = lambda *a: subprocess.Popen([sys.executable, "-m", "breastgan", *a], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: E731
    victim = cli("train", "--config", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "killed"))
    marker = tmp_path / "killed" / "checkpoints" / "step_00000006" / "meta.json"
    deadline = time.time() + 240
    while not marker.exists():
        assert victim.poll() is None, "run finished before it could be killed: " + victim.stdout.read().decode()[-500:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step_00000030").exists()  # it really was interrupted
    resumed = cli("train", "--resume", str(tmp_path / "killed"))
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out
    for name in ("g_ab", "g_ba", "d_a", "d_b"):
        a = load_file(str(straight / "checkpoints" / "step_00000030" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "killed" / "checkpoints" / "step_00000030" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_two_gloo_ranks_equal_one_rank_at_twice_the_batch(domains, tmp_path):
    """DDP over the four networks: 2 ranks x 2 images == 1 rank x 4 (buffers off: they are per rank)."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    _, b_root, _, _ = domains
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", BREASTGAN_DIST_TIMEOUT="60")
    runs = {}
    for nproc, batch in ((1, 4), (2, 2)):
        cfg = cyclegan_cfg(b_root, pool_size=0)
        cfg["train"].update(batch_size=batch, max_steps=4, checkpoint_every=4)
        path = tmp_path / f"cfg{nproc}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1",
                  f"--master_port={port}", "-m", "breastgan", "--"] if nproc > 1 else [sys.executable, "-m", "breastgan"]
        proc = subprocess.run([*launch, "train", "--config", str(path), "--run-dir", str(tmp_path / f"r{nproc}")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc] = tmp_path / f"r{nproc}" / "checkpoints" / "step_00000004"
    # weights agree; biases of convs followed by instance norm are not compared: the norm removes them, so
    # their gradient is zero up to rounding, which Adam scales to lr-sized steps (kept as the reference has them)
    for name in ("g_ab", "g_ba", "d_a", "d_b"):
        a, b = load_file(str(runs[1] / f"{name}.safetensors")), load_file(str(runs[2] / f"{name}.safetensors"))
        for k in a:
            if k.endswith(".weight"):
                torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"{name}.{k}")
    # and so do the outputs
    _, _, test_a, _ = domains
    g1, g2 = load_generator(tmp_path / "r1"), load_generator(tmp_path / "r2")
    for d in ("a2b", "b2a"):
        torch.testing.assert_close(g1.translate(test_a, d), g2.translate(test_a, d), atol=1e-4, rtol=0)  # float reduction order


def test_a_model_trained_on_16_px_patches_translates_a_1280x1024_frame(cyclegan_run, tmp_path):
    import numpy as np

    from breastgan.data.io import read_image
    from breastgan.generation.translate import translate_images

    (tmp_path / "in").mkdir()
    frame = np.clip(np.random.default_rng(0).normal(0.5, 0.1, (1024, 1280)), 0, 1).astype(np.float32)
    write_image(tmp_path / "in" / "frame.png", frame, bit_depth=16)
    doc = translate_images(load_generator(cyclegan_run), "a2b", tmp_path / "in", tmp_path / "out", preview=1, run=str(cyclegan_run))
    out = read_image(tmp_path / "out" / "images" / "frame.png")
    assert out.pixels.shape == (1024, 1280) and out.bit_depth == 16 and doc["run"] == str(cyclegan_run)
    assert len(np.unique(out.pixels)) > 256  # not quantised to 8 bits


def test_random_crops_train_on_crops_and_describe_the_crop(domains, tmp_path):
    from breastgan.training.recipes.cyclegan import random_crops

    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    c = random_crops(x, torch.tensor([[0.0, 0.0], [0.999, 0.999]]), 8, "t")
    assert torch.equal(c[0], x[0, :, :8, :8]) and torch.equal(c[1], x[1, :, 8:, 8:])
    _, b_root, _, _ = domains
    cfg = cyclegan_cfg(b_root, crop=8)
    # in-training evaluation compares A -> B translations (recipe.synthesize) with domain B (eval_reference)
    cfg["train"].update(max_steps=2, sample_every=2, eval=[{"metric": "pixel_stats", "every": 2, "n": 8}])
    run = train(cfg, run_dir=tmp_path / "crop").run_dir
    assert json.loads((run / "model.json").read_text())["output"]["image_size"] == [8, 8]
    logged = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("pixel_stats") for r in logged for k in r), logged[-1]
    bad = cyclegan_cfg(b_root, crop=20)
    with pytest.raises(ConfigError, match=r"recipe.crop 20 is larger than recipe.domain_a's images \(16x16\)"):
        train(bad, run_dir=tmp_path / "bad")
