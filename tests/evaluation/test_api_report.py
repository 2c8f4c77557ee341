"""End-to-end plumbing: evaluate() on tensors and folders with a small TorchScript extractor, the report, the CLI,
and the training callbacks. Inception itself is exercised in test_fid_kid.py."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from breastgan.data.io import write_image
from breastgan.evaluation import METRICS, evaluate
from breastgan.evaluation.report import read_training_log

torch.set_num_threads(2)
CHROMIUM = Path("/usr/bin/chromium")


def _textures(n: int, size: int, seed: int, smooth: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 1, size // smooth, size // smooth, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 16, 5, stride=2)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))  # feature maps: the extractor pools them


@pytest.fixture(scope="module")
def small_extractor(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("net") / "small.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_SmallNet().eval()), str(path))
    return {"name": "torchscript", "path": str(path)}


@pytest.fixture(scope="module")
def lpips_random_backbone() -> dict:
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
    return {k: v for k, v in ref.state_dict().items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, small_extractor, lpips_random_backbone):
    out = tmp_path_factory.mktemp("eval")
    weights = out / "alex_random.pth"
    torch.save(lpips_random_backbone, weights)
    run = out / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "time": 0.0, "loss/g": 1.0 / (s + 1), "kid/kid": 0.1 - s * 1e-3}) for s in range(20)) + "\n{\"step\": 2")
    real, fake = _textures(60, 64, 1), _textures(50, 64, 2, smooth=4)
    fake[3] = real[5].flip(-1)  # a memorised image
    summary = evaluate(real, fake, out_dir=out, extractor=small_extractor, cache_dir=out / "cache", n_boot=20, run_dir=run,
                       metrics=["fid", "kid", "prdc", "embedding-swd", "swd", "psnr", "ssim", "ms-ssim", "lpips", "is", "memorisation"],
                       options={"lpips": {"backbone_weights": str(weights), "n_pairs": 64}, "embedding-swd": {"methods": ["pca"]},
                                "swd": {"descriptors_per_image": 32, "n_boot": 3}, "ssim": {"n_pairs": 200}, "ms-ssim": {"n_pairs": 200}})
    return out, summary


def test_evaluate_writes_every_metric_with_policy_n_and_ci(evaluated):
    out, summary = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"].keys() == summary["metrics"].keys()
    expected = {"fid", "kid", "precision", "recall", "density", "coverage", "swd_pca", "swd", "psnr_real_fake", "psnr_fake_fake",
                "ssim_real_fake", "ms_ssim_real_fake", "ms_ssim_fake_fake", "lpips_real_fake", "lpips_fake_fake",
                "nn_ratio_pixel", "nn_ratio_ssim", "nn_ratio_feature", "near_copy_fraction"}
    assert expected <= set(summary["metrics"])
    for name, m in summary["metrics"].items():
        assert m["input_policy"], f"{name} does not record its input policy"
        assert m["n"], name
        assert m["ci95"] is None or m["ci95"][0] <= m["ci95"][1], name
    assert summary["metrics"]["fid"]["input_policy"]["channels"] == "grey"
    assert "fid" in " ".join(summary["warnings"])  # n=50 triggers the small-sample warning
    assert "classifier head" in summary["skipped"]["is"]
    assert summary["metrics"]["near_copy_fraction"]["details"]["n_flagged"] >= 1
    assert summary["metrics"]["kid"]["details"]["subset_size"] == 50


def test_report_is_self_contained(evaluated):
    out, _ = evaluated
    text = (out / "report.html").read_text()
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text)
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) == text.count("<img")
    alts = {a for a, _ in imgs}
    assert {"real samples", "synthetic samples", "pca scatter plot", "training curves", "memorisation distance histograms"} <= alts
    assert any("nearest training image" in a for a in alts)
    for _, data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fid" in text and "95% CI" in text


def test_training_log_reader_skips_partial_lines(evaluated):
    out, _ = evaluated
    series = read_training_log(out / "run" / "logs" / "metrics.jsonl")
    assert set(series) == {"loss/g", "kid/kid"} and len(series["loss/g"][0]) == 20


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium (CI installs Debian's chromium)")
def test_report_opens_in_headless_chromium_without_errors(evaluated, tmp_path):
    out, _ = evaluated
    report = out / "report.html"
    # a broken image keeps naturalWidth 0, which --dump-dom cannot show: a copy of the page adds a one-line check
    # that writes the count of images and of broken ones into the document title
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{const b=[...document.images].filter(i=>!i.complete||i.naturalWidth===0);"
        "document.title='IMAGES:'+document.images.length+':BROKEN:'+b.length;});</script></body>"))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"<title>IMAGES:(\d+):BROKEN:(\d+)</title>", proc.stdout)
    assert m, proc.stdout[:500]
    assert int(m.group(1)) >= 5 and int(m.group(2)) == 0
    # Chromium logs every console message (console.error, uncaught exceptions, failed loads) as "...:CONSOLE:..."
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    # and the original report, unmodified, loads without console errors either
    proc2 = subprocess.run(cmd[:-1] + [report.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0 and not [line for line in proc2.stderr.splitlines() if ":CONSOLE" in line]


def test_evaluate_folders_cache_and_validation(tmp_path, small_extractor):
    for role, imgs in (("real", _textures(12, 32, 3)), ("fake", _textures(12, 32, 4))):
        (tmp_path / role).mkdir()
        for i, im in enumerate(imgs):
            write_image(tmp_path / role / f"{i:03d}.png", im[0].numpy(), bit_depth=16)
    kw = dict(metrics=["fid", "kid"], extractor=small_extractor, cache_dir=tmp_path / "cache", n_boot=5)
    first = evaluate(tmp_path / "real", tmp_path / "fake", **kw)
    second = evaluate(tmp_path / "real", tmp_path / "fake", **kw)
    assert first["metrics"]["fid"]["details"]["real_from_cache"] is False
    assert second["metrics"]["fid"]["details"]["real_from_cache"] is True
    assert second["metrics"]["fid"]["value"] == pytest.approx(first["metrics"]["fid"]["value"], rel=1e-9)
    assert first["inputs"]["real"]["bit_depths_seen"] == [16]
    with pytest.raises(ValueError, match="unknown option for 'kid'"):
        evaluate(tmp_path / "real", tmp_path / "fake", metrics=["kid"], options={"kid": {"subset": 10}}, extractor=small_extractor)
    with pytest.raises(KeyError, match="unknown metric 'fdi'"):
        evaluate(tmp_path / "real", tmp_path / "fake", metrics=["fdi"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(torch.rand(4, 1, 8, 8) * 2, torch.rand(4, 1, 8, 8), metrics=["psnr"])


def test_evaluate_from_a_generator_object(small_extractor):
    class Gen:
        def sample(self, n, seed=0, labels=None):
            return _textures(n, 32, 100 + seed)

    s = evaluate(_textures(30, 32, 5), Gen(), n=20, metrics=["kid", "psnr"], extractor=small_extractor, cache_dir=False, n_boot=5)
    assert s["inputs"]["fake"]["kind"] == "generator" and s["metrics"]["kid"]["n"]["fake"] == 20


def test_cli_evaluate(tmp_path, small_extractor):
    from breastgan.cli.evaluate import register

    for role, seed in (("real", 6), ("fake", 7)):
        (tmp_path / role).mkdir()
        for i, im in enumerate(_textures(10, 32, seed)):
            write_image(tmp_path / role / f"{i}.png", im[0].numpy(), bit_depth=8)
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # a multi-command app, as breastgan's
        pass

    res = CliRunner().invoke(app, ["evaluate", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--out", str(tmp_path / "out"),
                                   "--metrics", "kid,psnr,ms-ssim", "--extractor", small_extractor["path"], "--no-cache", "--n-boot", "5",
                                   "-o", "kid.subsets=7"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["metrics"]["kid"]["details"]["subsets"] == 7 and (tmp_path / "out" / "report.html").is_file()
    bad = CliRunner().invoke(app, ["evaluate", "--real", "x", "--fake", "y", "--out", "z", "-o", "kid"])
    assert bad.exit_code != 0 and "METRIC.OPTION=VALUE" in bad.output
    listing = CliRunner().invoke(app, ["evaluate", "--list"])
    assert listing.exit_code == 0 and "memorisation" in listing.output


def test_every_metric_declares_an_input_policy():
    for entry in METRICS:
        assert getattr(entry.obj, "policy", None), entry.name


def test_in_training_kid_and_fid_use_the_evaluation_metrics(small_extractor, tmp_path):
    """train.eval runs the registered metrics themselves: same numbers as evaluate() on the same sets."""
    from breastgan.config import EvalSpec
    from breastgan.data.base import DatasetInfo, TensorDataset
    from breastgan.evaluation import evaluate
    from breastgan.training.evaluation import TrainingEvaluator

    ds = TensorDataset(_textures(40, 32, 8), torch.zeros(40), DatasetInfo("t", (32, 32)))
    kid = TrainingEvaluator(EvalSpec(metric="kid", n=30, extractor=small_extractor, cache_dir=str(tmp_path), subsets=10, subset_size=30), ds)
    fid = TrainingEvaluator(EvalSpec(metric="fid", n=30, extractor=small_extractor, cache_dir=str(tmp_path)), ds)
    calls = []

    def sample(n: int, seed: int) -> torch.Tensor:
        calls.append((n, seed))
        return _textures(n, 32, seed)

    good = kid(lambda n, s: ds.images[:n])
    bad = kid(sample)
    assert next(iter(good)) == "kid" and good["kid"][0] < bad["kid"][0] and bad["kid"][1] is True
    f = fid(sample)
    assert next(iter(f)) == "fid" and f["fid"][0] > 0
    assert len(list(tmp_path.glob("*.npz"))) == 1  # real features cached once, shared by both metrics
    # the same value evaluate() reports for the same real subset and fakes
    ref = evaluate(kid.real, _textures(30, 32, 12345), metrics=["kid"], options={"kid": {"subsets": 10, "subset_size": 30}},
                   extractor=small_extractor, cache_dir=str(tmp_path), report=False)
    assert ref["metrics"]["kid"]["value"] == pytest.approx(bad["kid"][0], rel=1e-6)
