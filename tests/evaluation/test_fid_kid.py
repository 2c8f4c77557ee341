"""FID and KID: closed forms, agreement with torch-fidelity and torchmetrics, streaming statistics, cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from breastgan.evaluation.extractors import InputPolicy, apply_policy, tf1_bilinear_resize
from breastgan.evaluation.features import RunningStats, cache_key, cached_features
from breastgan.evaluation.fid import feature_stats, frechet_distance, frechet_distance_features, trace_sqrt_product
from breastgan.evaluation.kid import kernel_inception_distance
from breastgan.evaluation.sources import from_tensor

torch.set_num_threads(2)


def _features(n: int, d: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    return (torch.randn(n, d, generator=g) @ mix) * scale + shift + torch.rand(n, d, generator=g).abs()


def test_frechet_closed_form_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())  # = 5 + (1 + 1 + 4)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(11.0)


def test_frechet_matches_sqrtm_for_non_commuting_covariances():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 16, generator=g, dtype=torch.float64), torch.randn(40, 16, generator=g, dtype=torch.float64)
    s1, s2 = x.T @ x / 40, (y.T @ y / 40) + torch.diag(torch.linspace(0.1, 2, 16, dtype=torch.float64))
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    assert trace_sqrt_product(s1, s2) == pytest.approx(float(np.trace(root).real), rel=1e-9)


def test_frechet_rank_deficient_covariances_use_eigen_path():
    f1, f2 = _features(20, 64, seed=1), _features(25, 64, shift=0.5, seed=2)  # n < d: both covariances singular
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    ref = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    f = _features(600, 128)
    assert abs(frechet_distance_features(f, f)) < 1e-6


def test_fid_matches_torch_fidelity_statistics_function():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    f1, f2 = _features(500, 96, seed=1), _features(400, 96, shift=0.3, scale=1.2, seed=2)
    ref = fid_statistics_to_metric(fid_features_to_statistics(f1.double()), fid_features_to_statistics(f2.double()), verbose=False)
    ours = frechet_distance_features(f1, f2)
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)


class _TinyExtractor(torch.nn.Module):
    """A fixed random conv net standing in for Inception: torchmetrics and breastgan see the same features."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 32, 5, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.copy_(torch.randn(32, generator=g) * 0.1)
        self.num_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv((x.float() - 128) / 128))
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1).double()


def test_fid_and_kid_match_torchmetrics_with_the_same_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    real = (torch.rand(120, 1, 32, 32, generator=g) * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    fake = (torch.rand(120, 1, 32, 32, generator=g) ** 2 * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    net = _TinyExtractor()
    tm_fid = FrechetInceptionDistance(feature=net)
    tm_fid.update(real, real=True)
    tm_fid.update(fake, real=False)
    # one subset covering every sample: torchmetrics' randperm order cannot change the value
    tm_kid = KernelInceptionDistance(feature=net, subsets=1, subset_size=120)
    tm_kid.update(real, real=True)
    tm_kid.update(fake, real=False)
    with torch.no_grad():
        fr, ff = net(real), net(fake)
    assert frechet_distance_features(fr, ff) == pytest.approx(float(tm_fid.compute()), rel=1e-4)
    ours = kernel_inception_distance(fr, ff, subsets=1, subset_size=120)
    assert ours.mean == pytest.approx(float(tm_kid.compute()[0]), rel=1e-4)


def test_kid_matches_torch_fidelity_including_subset_draws():
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = _features(300, 64, seed=4), _features(260, 64, shift=0.2, seed=5)
    kw = dict(kid_subsets=20, kid_subset_size=100, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
              kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    ref = kid_features_to_metric(f1.double(), f2.double(), **kw)
    ours = kernel_inception_distance(f1, f2, subsets=20, subset_size=100, seed=2020)
    assert ours.mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert ours.std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-4)
    per_subset = kernel_inception_distance(f1, f2, subsets=20, subset_size=100, seed=2020, full_kernel_max_n=10)
    assert per_subset.mean == pytest.approx(ours.mean, rel=1e-10)


def test_kid_subset_size_is_capped_and_reported_and_ci_brackets():
    f1, f2 = _features(80, 32, seed=1), _features(60, 32, shift=1.0, seed=2)
    r = kernel_inception_distance(f1, f2, subsets=10, n_boot=100)
    assert r.subset_size == 60
    assert r.ci is not None and r.ci[0] < r.mean < r.ci[1]
    same = kernel_inception_distance(f1, _features(80, 32, seed=9), subsets=10)
    assert abs(same.mean) < r.mean / 10


def test_running_stats_equal_numpy_cov_and_do_not_grow():
    f = _features(1000, 32, shift=3.0)
    rs = RunningStats(32)
    for chunk in f.split(77):
        rs.update(chunk)
    np.testing.assert_allclose(rs.mean.numpy(), f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(rs.cov.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    assert rs.outer.numel() == 32 * 32


def test_tf1_bilinear_matches_torch_fidelity_resize():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.rand(2, 3, 37, 50) * 255
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(tf1_bilinear_resize(x, (299, 299)), ref, atol=2e-3, rtol=1e-5)


def test_input_policy_quantises_and_replicates():
    x = torch.full((1, 1, 8, 8), 0.5004)
    out = apply_policy(x, InputPolicy(resize_to=None))
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out, torch.full_like(out, (128 - 128) / 128))  # round(0.5004 * 255) = 128
    unq = apply_policy(x, InputPolicy(resize_to=None, quantise="none"))
    assert float(unq[0, 0, 0, 0]) != float(out[0, 0, 0, 0])


class _CountingExtractor:
    """A stand-in extractor that records how many images it saw."""

    name = "counting"
    batch_size = 16

    def __init__(self, tag: str = "a"):
        self.seen = 0
        self.tag = tag

    def describe(self):
        return {"extractor": "counting", "tag": self.tag}

    def __call__(self, images):
        self.seen += images.shape[0]
        return torch.cat([images.mean((2, 3)), images.std((2, 3)), images.amax((2, 3))], 1)


def test_real_features_are_cached_by_content_and_extractor(tmp_path):
    imgs = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    src = from_tensor(imgs)
    ext = _CountingExtractor()
    a = cached_features(src, ext, tmp_path)  # type: ignore[arg-type]
    b = cached_features(from_tensor(imgs.clone()), ext, tmp_path)  # type: ignore[arg-type]
    assert ext.seen == 40 and b.from_cache and not a.from_cache
    torch.testing.assert_close(a.cov, b.cov)
    assert cache_key(src, ext) != cache_key(src, _CountingExtractor("b"))  # type: ignore[arg-type]
    imgs[0, 0, 0, 0] = 1 - imgs[0, 0, 0, 0]
    assert cache_key(from_tensor(imgs), ext) != cache_key(src, ext)  # type: ignore[arg-type]


@pytest.mark.slow  # two Inception-v3 passes on CPU: ~20-70 s depending on load
def test_inception_features_match_torch_fidelity_on_same_uint8_inputs():
    """Same Inception weights, same uint8 images: breastgan's fast path equals torch-fidelity's pipeline."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from breastgan.evaluation.compat import torch_fidelity_inception_from_fid_helper
    from breastgan.evaluation.extractors import build_extractor

    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 1, 48, 48, generator=g)
    fake = (torch.rand(4, 1, 48, 48, generator=g) ** 3).clamp(0, 1)
    ext = build_extractor("inception-fid")
    ref_net = torch_fidelity_inception_from_fid_helper()
    with torch.inference_mode():
        ref = [ref_net((x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1))[0] for x in (real, fake)]
    ours = [ext(real), ext(fake)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    ref_fid = fid_statistics_to_metric(*(fid_features_to_statistics(r.double()) for r in ref), verbose=False)["frechet_inception_distance"]
    assert frechet_distance_features(*ours) == pytest.approx(ref_fid, rel=1e-4)


def test_frechet_reference_equals_direct_distance():
    from breastgan.evaluation.fid import FrechetReference

    f1, f2 = _features(300, 48, seed=11), _features(250, 48, shift=0.4, seed=12)
    (m1, s1), (m2, s2) = feature_stats(f1), feature_stats(f2)
    assert FrechetReference(m1, s1).distance(m2, s2) == pytest.approx(frechet_distance(m1, s1, m2, s2), rel=1e-10)
    singular = FrechetReference(*feature_stats(f1[:20]))  # n < d: no Cholesky factor, falls back to the eigen path
    assert singular.chol is None and singular.distance(m2, s2) == pytest.approx(frechet_distance(*feature_stats(f1[:20]), m2, s2), rel=1e-10)
