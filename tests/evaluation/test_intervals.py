"""Issue 13: intervals that contain their estimate and cover the population value; fid_inf; PSNR of identical pairs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from breastgan.evaluation import evaluate
from breastgan.evaluation.bootstrap import finish_interval, half_sampling_ci
from breastgan.evaluation.fid import feature_stats, fid_ci, fid_extrapolation, frechet_distance, frechet_distance_features
from breastgan.evaluation.kid import kernel_inception_distance


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
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


@pytest.fixture(scope="module")
def small_extractor(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("net") / "small.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_SmallNet().eval()), str(path))
    return {"name": "torchscript", "path": str(path)}


def test_every_interval_contains_its_estimate(small_extractor):
    real, fake = _textures(40, 32, 1), _textures(40, 32, 2, smooth=4)
    s = evaluate(real, fake, metrics=["fid", "fid_inf", "kid", "prdc", "embedding-swd", "swd", "psnr", "ssim", "ms-ssim",
                                      "perceptual-inception", "memorisation"],
                 options={"embedding-swd": {"methods": ["pca"]}, "swd": {"n_boot": 6}, "fid_inf": {"n_boot": 6}},
                 extractor=small_extractor, cache_dir=False, n_boot=20, seed=3)
    with_ci = {name: m for name, m in s["metrics"].items() if m["ci95"] is not None}
    expected = {"fid", "fid_inf", "kid", "precision", "recall", "density", "coverage", "swd_pca", "swd", "psnr_real_fake", "psnr_fake_fake",
                "ssim_real_fake", "ssim_fake_fake", "ms_ssim_real_fake", "ms_ssim_fake_fake", "perceptual_inception_real_fake",
                "perceptual_inception_fake_fake", "nn_ratio_pixel", "nn_ratio_ssim", "nn_ratio_feature", "near_copy_fraction"}
    assert expected <= set(with_ci), expected - set(with_ci)
    for name, m in with_ci.items():
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi, (name, m["value"], m["ci95"])
        assert m["details"]["ci"]["method"] in ("half-sampling", "bootstrap-percentile", "regression"), name
    assert s["metrics"]["fid"]["details"]["ci"]["method"] == "half-sampling"
    assert "equal n" in s["metrics"]["fid"]["details"]["comparability"]
    assert any("rank models by KID" in w for w in s["warnings"])


def test_finish_interval_widens_to_the_estimate_and_says_so():
    iv = finish_interval(43.3, 48.9, 55.8, "half-sampling", 20, bounds=(0.0, None))
    assert iv.bounds == (43.3, 55.8) and iv.describe()["extended_to_estimate"] and iv.extended == pytest.approx(5.6)
    assert finish_interval(float("inf"), 1.0, 2.0, "x", 5) is None  # never a finite interval around an infinite value


def test_fid_gram_form_equals_the_covariance_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 64, generator=g), torch.randn(40, 64, generator=g) * 1.3 + 0.2
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance(*feature_stats(a), *feature_stats(b)), rel=1e-6)


def _gaussians(dim: int):
    mu1, mu2 = torch.zeros(dim, dtype=torch.float64), torch.full((dim,), 0.3, dtype=torch.float64)
    s1, s2 = torch.eye(dim, dtype=torch.float64), torch.diag(torch.linspace(0.8, 1.5, dim, dtype=torch.float64))
    return mu1, s1, mu2, s2


def _draw(mu, s, n, g):
    return mu + torch.randn(n, mu.shape[0], generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s).T


def test_fid_and_kid_intervals_cover_the_population_value():
    dim, n, draws = 4, 100, 40
    mu1, s1, mu2, s2 = _gaussians(dim)
    pop_fid = frechet_distance(mu1, s1, mu2, s2)
    g = torch.Generator().manual_seed(7)
    # population MMD^2 of the cubic kernel by Monte Carlo over independent pairs (standard error ~2e-3; intervals are ~0.5 wide)
    terms = []
    for (ma, sa), (mb, sb) in (((mu1, s1), (mu1, s1)), ((mu2, s2), (mu2, s2)), ((mu1, s1), (mu2, s2))):
        x, y = _draw(ma, sa, 200_000, g), _draw(mb, sb, 200_000, g)
        terms.append(float((((x * y).sum(1) / dim + 1.0) ** 3).mean()))
    pop_kid = terms[0] + terms[1] - 2 * terms[2]
    fid_hits = kid_hits = 0
    for r in range(draws):
        x, y = _draw(mu1, s1, n, g), _draw(mu2, s2, n, g)
        fid = frechet_distance_features(x, y)
        iv = fid_ci(x, y, fid, 20, r)
        assert iv.lo <= fid <= iv.hi
        fid_hits += iv.lo <= pop_fid <= iv.hi
        k = kernel_inception_distance(x.float(), y.float(), n_boot=50, boot_seed=r)
        assert k.ci[0] <= k.mean <= k.ci[1]
        kid_hits += k.ci[0] <= pop_kid <= k.ci[1]
    assert fid_hits / draws >= 0.85, fid_hits
    assert kid_hits / draws >= 0.85, kid_hits


def test_fid_inf_recovers_the_population_fid():
    # stated tolerance: the mean error over 6 draws is within 0.25 of the closed-form FID (3.34; 32-D, n = 500 per set),
    # where FID at n is biased by about +1.2
    mu1, s1, mu2, s2 = _gaussians(32)
    pop = frechet_distance(mu1, s1, mu2, s2)
    g = torch.Generator().manual_seed(3)
    errs_inf, errs_n = [], []
    for r in range(6):
        x, y = _draw(mu1, s1, 500, g), _draw(mu2, s2, 500, g)
        fit = fid_extrapolation(x, y, seed=r)
        errs_inf.append(fit["fid_inf"] - pop)
        errs_n.append(frechet_distance_features(x, y) - pop)
        assert fit["slope"] > 0 and fit["r2"] > 0.5  # FID falls with n, linearly in 1/n
    assert abs(np.mean(errs_inf)) < 0.25, errs_inf
    assert np.mean(errs_n) > 0.8, errs_n  # the bias fid_inf removes


def test_half_sampling_removes_a_one_over_n_bias():
    # t_n = mean + c / n: the half-sampling deviations are exactly c / n, so the interval is centred on the unbiased mean
    x = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stat = lambda i: float(x[i].mean()) + 5.0 / len(i)  # noqa: E731
    est = stat(torch.arange(200))
    iv, _ = half_sampling_ci(stat, [200], est, 200, 1)
    assert iv.lo <= est <= iv.hi
    centre_raw = est - 5.0 / 200  # the value without its bias
    assert abs((iv.lo + iv.hi) / 2 - centre_raw) < abs((iv.lo + iv.hi) / 2 - est) or iv.extended > 0


def test_psnr_of_identical_pairs_is_counted_at_the_cap():
    x = _textures(12, 32, 5)
    s = evaluate(x, x.clone(), metrics=["psnr"], options={"psnr": {"protocol": "paired", "fake_fake": False}}, cache_dir=False, n_boot=20)
    m = s["metrics"]["psnr_real_fake"]
    assert m["value"] == pytest.approx(100.0) and m["ci95"][0] <= 100.0 <= m["ci95"][1]
    assert m["details"]["identical_pairs"] == 12 and any("pixel-identical" in w for w in m["warnings"])
    assert all(math.isfinite(v) for v in m["ci95"])
