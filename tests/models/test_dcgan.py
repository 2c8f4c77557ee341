import pytest
import torch

from breastgan.models import DISCRIMINATORS, GENERATORS
from breastgan.registry import ConfigArgumentError


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_generator_and_discriminator_shapes(size):
    g = GENERATORS.build("dcgan", {"image_size": size, "base_width": 4, "max_width": 32})
    d = DISCRIMINATORS.build("dcgan", {"image_size": size, "base_width": 4, "max_width": 32, "kernel_size": 6})
    x = g(torch.randn(3, 100))
    assert x.shape == (3, 1, size, size)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert d(x).shape == (3,)


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 8, 9])
def test_discriminator_kernel_sizes_halve_resolution(k):
    d = DISCRIMINATORS.build("dcgan", {"image_size": 64, "base_width": 4, "kernel_size": k})
    assert d(torch.randn(2, 1, 64, 64)).shape == (2,)


def test_mammography_patch_variant_matches_recipe():
    # methods.md §2: latent 100, 128x128 grey, discriminator kernel 6
    g = GENERATORS.build("dcgan", {"image_size": 128})
    d = DISCRIMINATORS.build("dcgan", {"image_size": 128, "kernel_size": 6})
    assert g.latent_dim == 100 and g.channels == 1
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (6, 6) for c in convs)
    assert len(convs) == 5  # 128 -> 64 -> 32 -> 16 -> 8 -> 4


def test_wgan_critic_has_no_batch_norm_and_rejects_it():
    c = DISCRIMINATORS.build("wgan_gp_critic", {"image_size": 64})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in c.modules())
    with pytest.raises(ConfigArgumentError, match="norm"):
        DISCRIMINATORS.build("wgan_gp_critic", {"image_size": 64, "norm": "batch"})


def test_invalid_image_size():
    with pytest.raises(ConfigArgumentError, match="power of two between 32 and 256"):
        GENERATORS.build("dcgan", {"image_size": 100})


@pytest.mark.parametrize("conditioning", ["projection", "concat"])
def test_conditional_models_use_labels(conditioning):
    torch.manual_seed(0)
    g = GENERATORS.build("dcgan", {"image_size": 32, "base_width": 8, "num_classes": 3}).eval()
    d = DISCRIMINATORS.build("dcgan", {"image_size": 32, "base_width": 8, "num_classes": 3, "conditioning": conditioning}).eval()
    z = torch.randn(2, 100)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b), "labels must change the generator output"
    x = torch.randn(2, 1, 32, 32)
    assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="pass labels"):
        g(z)
    with pytest.raises(ValueError, match="pass labels"):
        d(x)
