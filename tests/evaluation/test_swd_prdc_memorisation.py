"""SWD, precision/recall/density/coverage and memorisation on small random sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from breastgan.evaluation.memorisation import pixel_candidates, ssim_nearest
from breastgan.evaluation.prdc import knn_radii, precision_recall_density_coverage
from breastgan.evaluation.swd import (
    embedding_swd,
    laplacian_pyramid,
    multiscale_swd,
    pyr_down,
    pyr_up,
    pyramid_levels,
    sliced_wasserstein,
    wasserstein1_1d,
)

torch.set_num_threads(2)


def _textures(n: int, size: int, seed: int, smooth: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 1, size // smooth, size // smooth, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def test_sliced_wasserstein_hand_checked_1d_case():
    # in 1-D every unit direction is +-1, so SWD is the W1 distance: sorted {0, 1} vs {2, 3} -> mean |0-2|, |1-3| = 2
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[3.0], [2.0]])
    assert sliced_wasserstein(a, b, dirs_per_repeat=5, repeats=2) == pytest.approx(2.0)
    assert float(wasserstein1_1d(a, b)[0]) == pytest.approx(2.0, rel=1e-9)
    # 2-D: a shift by (3, 4) projects to |3 cos + 4 sin| along each direction
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    shifted = pts + torch.tensor([3.0, 4.0])
    g = torch.Generator().manual_seed(5)
    dirs = torch.randn(2, 64, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    expected = float((torch.tensor([3.0, 4.0]) @ dirs).abs().mean())
    assert sliced_wasserstein(pts, shifted, dirs_per_repeat=64, repeats=1, seed=5) == pytest.approx(expected, rel=1e-5)


def test_laplacian_pyramid_reconstructs_the_image():
    x = _textures(2, 64, 0)
    pyr = laplacian_pyramid(x, pyramid_levels(64))
    assert [p.shape[-1] for p in pyr] == [64, 32, 16]
    rec = pyr[-1]
    for band in reversed(pyr[:-1]):
        rec = pyr_up(rec) + band
    torch.testing.assert_close(rec, x, atol=1e-5, rtol=0)
    flat = torch.full((1, 1, 16, 16), 0.3)
    torch.testing.assert_close(pyr_down(flat), torch.full((1, 1, 8, 8), 0.3))


def test_multiscale_swd_identical_small_perturbed_large_shifted():
    real = _textures(48, 64, 1)
    same = multiscale_swd(real, real.clone(), seed=0)
    perturbed = multiscale_swd(real, (real + 0.01 * torch.randn_like(real)).clamp(0, 1), seed=0)
    shifted = multiscale_swd(real, _textures(48, 64, 2, smooth=2), seed=0)  # different texture scale
    assert same["mean"] == pytest.approx(0.0, abs=1e-6)
    assert set(same["per_level"]) == {"64", "32", "16"}
    assert perturbed["mean"] < shifted["mean"]
    assert shifted["mean"] > 10 * perturbed["mean"]


def test_embedding_swd_identical_zero_and_grows_with_shift():
    a = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert embedding_swd(a, a.clone()) == pytest.approx(0.0, abs=1e-9)
    assert embedding_swd(a, a + 0.1) < embedding_swd(a, a + 1.0)


def test_prdc_hand_checked_and_limits():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # k=1 radii: 1, 1, 1, 8 ; fakes at 0.5 (inside balls of 0, 1), 20 (outside every ball)
    fake = torch.tensor([[0.5], [20.0], [0.6]])
    torch.testing.assert_close(knn_radii(real, 1), torch.tensor([1.0, 1.0, 1.0, 8.0]))
    r = precision_recall_density_coverage(real, fake, k=1)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["coverage"] == pytest.approx(2 / 4)  # reals 0 and 1 have a fake in their ball
    # fake radii (k=1): 0.5 -> 0.1, 20 -> 19.4, 0.6 -> 0.1; reals 1, 2, 10 lie within 19.4 of 20, real 0 is 20 away
    assert r["recall"] == pytest.approx(3 / 4)
    # density: fake 0.5 is in balls of 0 and 1 (2), 0.6 in 0 (|0.6| <= 1), 1 (0.4), 2 (1.4 > 1: no) -> 2; total 4 / (1 * 3)
    assert r["density"] == pytest.approx(4 / 3)


def test_prdc_identical_distributions_near_one():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    r = precision_recall_density_coverage(real, fake, k=5)
    assert r["precision"] > 0.8 and r["recall"] > 0.8 and r["coverage"] > 0.8
    far = precision_recall_density_coverage(real, fake + 10, k=5)
    assert far["precision"] == 0 and far["coverage"] == 0


def test_memorisation_finds_flipped_copies():
    train = _textures(20, 32, 3)
    fake = _textures(6, 32, 4)
    fake[2] = train[7].flip(-1)  # a horizontally flipped training image
    fake[4] = train[11].flip(-2, -1)
    d, idx, flips = pixel_candidates(fake, train, k=3)
    assert int(idx[2, 0]) == 7 and int(idx[4, 0]) == 11
    assert float(d[2, 0]) == pytest.approx(0.0, abs=1e-3) and float(d[0, 0]) > 0.05
    s, sidx, _ = ssim_nearest(fake, train, idx, flips)
    assert float(s[2]) == pytest.approx(0.0, abs=1e-5) and int(sidx[4]) == 11
    loo_d, loo_i, _ = pixel_candidates(train, train, k=1, exclude_self=True)
    assert bool((loo_i[:, 0] != torch.arange(20)).all()) and float(loo_d.min()) > 0


def test_bootstrap_mean_ci_covers_truth():
    from breastgan.evaluation.bootstrap import bootstrap, mean_ci, small_n_warning

    v = torch.randn(500, generator=torch.Generator().manual_seed(1)) + 3
    lo, hi = mean_ci(v)
    assert lo < 3 < hi and hi - lo < 0.3
    (lo2, hi2), reps = bootstrap(lambda i: float(v[i].mean()), [len(v)], n_boot=300)
    assert lo2 < float(v.mean()) < hi2 and len(reps) == 300 and not math.isnan(float(np.mean(reps)))
    assert "KID" in (small_n_warning("fid", 200) or "")
    assert small_n_warning("fid", 50_000) is None


def test_wasserstein1_1d_matches_scipy_for_unequal_sizes():
    from scipy.stats import wasserstein_distance

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(37, 3, generator=g), torch.randn(52, 3, generator=g) * 1.5 + 0.3
    ours = wasserstein1_1d(a, b)
    for k in range(3):
        assert float(ours[k]) == pytest.approx(wasserstein_distance(a[:, k].numpy(), b[:, k].numpy()), rel=1e-9)
