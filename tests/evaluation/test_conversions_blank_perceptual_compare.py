"""Defect 8 of issue 12 (conversions recorded, sets below a metric's minimum refused) and issue 13's blank-image
rule, offline perceptual metric and ``evaluate --compare``."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from breastgan.data.io import write_image
from breastgan.evaluation import EvaluationContext, evaluate
from breastgan.evaluation.compare import IncomparableEvaluations, compare_evaluations
from breastgan.evaluation.context import run_metric
from breastgan.evaluation.sources import from_tensor


def _textures(n: int, size: int, seed: int, smooth: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 1, size // smooth, size // smooth, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def _folder(path, images, bit_depth=8):
    path.mkdir(parents=True)
    for i, im in enumerate(images):
        write_image(path / f"{i:03d}.png", im[0].numpy(), bit_depth=bit_depth)
    return path


# -- defect 8: conversions and minimum n --------------------------------------------------------------------------


def test_rgb_and_mixed_bit_depth_conversions_are_warnings_in_metrics_and_report(tmp_path):
    real = _folder(tmp_path / "real", _textures(6, 32, 1), bit_depth=8)
    write_image(real / "deep.png", _textures(1, 32, 9)[0, 0].numpy(), bit_depth=16)  # 8-bit mixed with 16-bit
    rgb = (np.stack([_textures(1, 32, 8)[0, 0].numpy()] * 3, -1) * 255).astype(np.uint8)
    rgb[..., 0] = 255 - rgb[..., 0]  # a real colour image, not grey stored as RGB
    Image.fromarray(rgb, "RGB").save(real / "colour.png")
    fake = _folder(tmp_path / "fake", _textures(8, 32, 2))
    s = evaluate(real, fake, metrics=["psnr"], out_dir=tmp_path / "out", cache_dir=False, n_boot=5)
    text = "\n".join(s["warnings"])
    assert "1 RGB file(s) converted to grey" in text and "colour.png" in text and str(real) in text
    assert "mixed bit depths (8-bit: 7, 16-bit: 1)" in text
    assert s["conversions"] and s["inputs"]["real"]["conversions"]["rgb_to_grey"] == ["colour.png"]
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["conversions"] == s["conversions"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "converted to grey" in html and "mixed bit depths" in html


def test_a_set_below_the_minimum_is_refused_naming_the_folder(tmp_path):
    real = _folder(tmp_path / "one", _textures(1, 32, 1))
    fake = _folder(tmp_path / "fake", _textures(8, 32, 2))
    # before the fix this succeeded, with "metrics" computed on the single real image
    with pytest.raises(ValueError, match=r"psnr needs at least 2 real images; .*one \(folder\) has 1"):
        evaluate(real, fake, metrics=["psnr"], cache_dir=False, n_boot=5)
    three = _folder(tmp_path / "three", _textures(3, 32, 3))
    s = evaluate(three, fake, metrics=["kid", "psnr"], cache_dir=False, n_boot=5,
                 extractor={"name": "torchscript", "path": str(_tiny_extractor(tmp_path))})
    assert "psnr_real_fake" in s["metrics"] and "kid" not in s["metrics"]
    assert "kid needs at least 4 real images" in s["skipped"]["kid"] and str(three) in s["skipped"]["kid"]


def _tiny_extractor(tmp_path):
    import warnings

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 8, 5, stride=2)

        def forward(self, x):
            return torch.relu(self.conv(x))

    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


# -- memorisation: blank images -----------------------------------------------------------------------------------


def test_blank_images_are_not_near_copies_but_a_true_copy_is():
    content = _textures(30, 32, 4)
    train = torch.cat([content, torch.zeros(5, 1, 32, 32), torch.full((3, 1, 32, 32), 0.4)])  # background crops and padding
    heldout = torch.cat([_textures(30, 32, 5), torch.zeros(4, 1, 32, 32)])
    blanks = torch.cat([torch.zeros(10, 1, 32, 32), torch.full((6, 1, 32, 32), 0.4), (0.02 * torch.rand(4, 1, 32, 32))])
    ctx = EvaluationContext(real=from_tensor(train), fake=from_tensor(blanks), train=from_tensor(train), heldout=from_tensor(heldout), n_boot=10)
    nc = {r.name: r for r in run_metric("memorisation", ctx, {"feature_space": False})}["near_copy_fraction"]
    assert nc.value == 0.0 and nc.details["n_flagged"] == 0
    assert nc.details["blank"]["synthetic_excluded"] == 20 and nc.details["blank"]["reference_excluded"] == 4
    assert nc.details["blank"]["blank_std"] == 0.02 and "blank if std" in nc.details["blank"]["rule"]
    assert any("20 of 20 synthetic images are blank" in w for w in nc.warnings)

    copies = torch.cat([content[:5], blanks[:5]])  # five true copies with content
    ctx = EvaluationContext(real=from_tensor(train), fake=from_tensor(copies), train=from_tensor(train), heldout=from_tensor(heldout), n_boot=10)
    nc = {r.name: r for r in run_metric("memorisation", ctx, {"feature_space": False})}["near_copy_fraction"]
    assert nc.details["n_flagged"] == 5 and nc.value == 0.5


# -- the offline perceptual metric --------------------------------------------------------------------------------


def test_perceptual_inception_offline_identical_collapsed_and_diverse(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    real = _textures(6, 32, 1)
    diverse = _textures(6, 32, 2, smooth=4)
    collapsed = diverse[:1].repeat(6, 1, 1, 1)

    def run(fake):
        ctx = EvaluationContext(real=from_tensor(real), fake=from_tensor(fake), n_boot=10)
        return {r.name: r for r in run_metric("perceptual-inception", ctx, {"n_pairs": 50})}

    same = run(real.clone())
    assert same["perceptual_inception_real_fake"].value == pytest.approx(0.0, abs=1e-6)
    assert same["perceptual_inception_real_fake"].details["not_lpips"] is True
    assert same["perceptual_inception_real_fake"].policy["resize_to"] == 299  # the Inception's recorded input policy
    col, div = run(collapsed), run(diverse)
    assert col["perceptual_inception_fake_fake"].value == pytest.approx(0.0, abs=1e-6)
    assert div["perceptual_inception_fake_fake"].value > 0.01
    assert div["perceptual_inception_real_fake"].value > same["perceptual_inception_real_fake"].value


# -- run-to-run comparison ----------------------------------------------------------------------------------------


def _evaluation(tmp_path, name, n, seed):
    out = tmp_path / name
    evaluate(_textures(n, 32, 100), _textures(n, 32, seed), metrics=["psnr", "ssim"], out_dir=out, cache_dir=False, n_boot=10, report=False)
    return out


def test_compare_refuses_different_n_unless_forced_and_writes_table_and_figure(tmp_path):
    a, b, c = _evaluation(tmp_path, "a", 12, 1), _evaluation(tmp_path, "b", 12, 2), _evaluation(tmp_path, "small", 8, 3)
    s = compare_evaluations([a, b], tmp_path / "cmp")
    assert s["comparable"] and [r["evaluation"] for r in s["rows"]] == ["a", "b"]
    for f in ("compare.csv", "compare.md", "compare.png", "compare.json"):
        assert (tmp_path / "cmp" / f).stat().st_size > 0
    header = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"psnr_real_fake", "psnr_real_fake_ci_lo", "psnr_real_fake_ci_hi", "ssim_fake_fake"} <= set(header)
    with pytest.raises(IncomparableEvaluations, match="n of the real set differs"):
        compare_evaluations([a, c], tmp_path / "cmp2")
    assert not (tmp_path / "cmp2").exists()
    forced = compare_evaluations([a, c], tmp_path / "cmp2", force=True)
    assert forced["forced"] and any("differs" in w for w in forced["warnings"])
    assert "Warning" in (tmp_path / "cmp2" / "compare.md").read_text()


def test_compare_refuses_a_different_extractor(tmp_path):
    a, b = _evaluation(tmp_path, "a", 12, 1), _evaluation(tmp_path, "b", 12, 2)
    m = json.loads((b / "metrics.json").read_text())
    m["extractor"] = {"name": "torchscript", "sha256": "0" * 64}
    (b / "metrics.json").write_text(json.dumps(m))
    m = json.loads((a / "metrics.json").read_text())
    m["extractor"] = {"name": "inception-fid"}
    (a / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(IncomparableEvaluations, match="extractor differs"):
        compare_evaluations([a, b], tmp_path / "cmp")


def test_cli_evaluate_compare(tmp_path):
    import typer
    from typer.testing import CliRunner

    from breastgan.cli.evaluate import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    a, b, c = _evaluation(tmp_path, "a", 12, 1), _evaluation(tmp_path, "b", 12, 2), _evaluation(tmp_path, "small", 8, 3)
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "| a |" in res.output and (tmp_path / "cmp" / "compare.png").is_file()
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(a), str(c), "--out", str(tmp_path / "cmp2")])
    assert res.exit_code != 0 and "not comparable" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--compare", str(a), str(c), "--out", str(tmp_path / "cmp2"), "--force"])
    assert res.exit_code == 0 and "warning: not comparable" in res.output
