"""PSNR, SSIM, MS-SSIM and LPIPS against their reference implementations."""

from __future__ import annotations

import warnings

import pytest
import torch

from breastgan.evaluation.lpips_metric import LPIPS
from breastgan.evaluation.ssim import MSSSIMConfig, ms_ssim, ms_ssim_config, psnr, random_pairs, ssim

torch.set_num_threads(2)


def _phantomish(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth blobs plus noise in [0, 1]: enough structure for SSIM to be far from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def test_psnr_by_hand():
    x = torch.zeros(1, 1, 4, 4)
    y = x.clone()
    y[0, 0, 0, 0] = 0.5  # MSE = 0.25 / 16
    assert float(psnr(x, y)) == pytest.approx(10 * torch.log10(torch.tensor(16 / 0.25)).item(), rel=1e-6)
    assert float(psnr(x, y, max_value=255.0)) == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 * 16 / 0.25)).item(), rel=1e-6)


def test_ssim_matches_pytorch_msssim():
    import pytorch_msssim

    x, y = _phantomish(4, 64, 0), _phantomish(4, 64, 1)
    ours = ssim(x, y)
    ref = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ssim(x, x), torch.ones(4))


def test_ms_ssim_matches_pytorch_msssim_at_256_and_with_7x7_window_at_128():
    import pytorch_msssim

    x, y = _phantomish(2, 256, 2), (_phantomish(2, 256, 2) * 0.8 + 0.2 * _phantomish(2, 256, 3))
    torch.testing.assert_close(ms_ssim(x, y), pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False), rtol=1e-5, atol=1e-6)
    a, b = x[..., :128, :128], y[..., :128, :128]
    cfg = ms_ssim_config(128)
    assert cfg.window_size == 7 and len(cfg.weights) == 5
    ref = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False, win_size=7)
    torch.testing.assert_close(ms_ssim(a, b), ref, rtol=1e-5, atol=1e-6)


def test_ms_ssim_small_images_use_fewer_scales_and_refuse_impossible_configs():
    cfg = ms_ssim_config(64)
    assert len(cfg.weights) == 4 and abs(sum(cfg.weights) - 1) < 1e-9
    x = _phantomish(2, 64, 6)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="needs images above 160 px"):
        ms_ssim(x, x, config=MSSSIMConfig(11, 1.5, (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), "standard"))


def test_fake_fake_pairs_are_distinct():
    i, j = random_pairs(5, 5, 1000, seed=0, distinct=True)
    assert bool((i != j).all()) and set(j.tolist()) == set(range(5))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_lpips_package_with_the_same_random_backbone(net):
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    ours = LPIPS(net, backbone_weights={k: v for k, v in ref.state_dict().items() if k.startswith("net.")})
    x, y = _phantomish(3, 64, 7), _phantomish(3, 64, 8)
    with torch.no_grad():
        expected = ref(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1), normalize=True).flatten()
    torch.testing.assert_close(ours(x, y), expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours(x, x), torch.zeros(3), atol=1e-7)


def test_lpips_refuses_random_backbone_unless_asked():
    with pytest.raises(ValueError, match="needs ImageNet backbone weights"):
        LPIPS("alex")
