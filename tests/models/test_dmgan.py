"""dm-GAN's generator: G2's layer plan, dropout in training only, the sampling rules, what export refuses."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from breastgan.models import GENERATORS
from breastgan.models.dmgan import DmGANGenerator

RENDERER = {"arch": "dcgan", "args": {"image_size": 32, "channels": 1, "latent_dim": 16, "base_width": 8, "max_width": 32}}


def make(**kw) -> DmGANGenerator:
    torch.manual_seed(0)
    args = {"renderer": RENDERER, "layer": 2, "n_codes": 4, "refiner": {"ngf": 8, "n_blocks": 9, "dropout": 0.5}, **kw}
    return GENERATORS.get("dmgan")(**GENERATORS.entry("dmgan").validate_args(args, "test").model_dump())


def test_g2_is_the_papers_resnet_encoder_decoder():
    G = make()
    convs = [m for m in G.g2.model if isinstance(m, nn.Conv2d)]
    down = [m for m in convs if m.stride == (2, 2)]
    ups = [m for m in G.g2.model if isinstance(m, nn.ConvTranspose2d)]
    blocks = [m for m in G.g2.model if type(m).__name__ == "ResnetBlock"]
    assert len(down) == 2 and len(ups) == 2 and len(blocks) == 9
    assert isinstance(G.g2.model[-1], nn.Tanh) and isinstance(G.g2.model[-2], nn.Conv2d)  # output convolution, then tanh
    assert all(any(isinstance(x, nn.Dropout) for x in b.block) for b in blocks)


@pytest.mark.parametrize("g2_input", ["image", "features"])
def test_shapes(g2_input):
    G = make(g2_input=g2_input)
    codes, alphas = torch.randn(3, 4, 16), torch.rand(3, 4, G.feature_channels)
    assert G.refine(codes, alphas).shape == (3, 1, 32, 32)
    assert G.g2.in_channels == (G.feature_channels if g2_input == "features" else 1)
    z = torch.randn(5, G.latent_dim)
    assert G.latent_dim == 4 * (16 + G.feature_channels)
    out = G(z).detach()
    assert out.shape == (5, 1, 32, 32) and float(out.abs().max()) <= 1


def test_dropout_only_in_training_mode_and_renderer_frozen():
    G = make()
    z = torch.randn(2, G.latent_dim)
    G.train()
    assert not torch.equal(G(z), G(z))  # dropout draws differ
    assert not G.g1.generator.training  # the pretrained renderer keeps its batch-norm statistics
    G.eval()
    assert torch.equal(G(z), G(z))
    assert all(not p.requires_grad for p in G.g1.parameters())
    assert all(p.requires_grad for p in G.g2.parameters())


def test_alpha_gaussian_rule_reads_codes_and_alphas_from_z():
    G = make().eval()
    fitted = torch.rand(7, 4, G.feature_channels) + 0.5
    G.set_alpha_prior(fitted)
    assert torch.allclose(G.alpha_mean, fitted.mean(0)) and torch.allclose(G.alpha_std, fitted.std(0))
    z = torch.randn(3, G.latent_dim)
    codes, alphas = G.sample_codes(z)
    assert torch.equal(codes, z[:, : 4 * 16].reshape(3, 4, 16))
    expect = fitted.mean(0) + fitted.std(0) * z[:, 4 * 16 :].reshape(3, 4, G.feature_channels)
    assert torch.allclose(alphas, expect)
    assert G.individual_fits == []


def test_interpolate_rule_stays_on_segments_between_fitted_sets():
    G = make(sampling="interpolate", bank_size=5).eval()
    bank_c, bank_a = torch.randn(5, 4, 16), torch.rand(5, 4, G.feature_channels)
    G.set_bank(bank_c, bank_a)
    # t -> 0 (z_2 very negative): the first set of the pair, i = floor(Phi(z_0) * 5)
    z = torch.tensor([[0.0, 0.0, -12.0], [1.0, 0.3, -12.0]])
    codes, alphas = G.sample_codes(z)
    phi = 0.5 * (1 + torch.erf(z[:, 0] / 2**0.5))
    i = (phi * 5).long()
    assert torch.allclose(codes, bank_c[i], atol=1e-6) and torch.allclose(alphas, bank_a[i], atol=1e-6)
    assert G.individual_fits == ["code_bank", "alpha_bank"]


def test_interpolate_needs_a_bank():
    with pytest.raises(Exception, match="bank_size"):
        make(sampling="interpolate")


def test_weights_round_trip_without_duplicated_tensors():
    G = make()
    state = G.state_dict()
    assert not any(k.startswith("_renderer") for k in state)
    H = make()
    H.load_state_dict(st_load(st_save({k: v.contiguous() for k, v in state.items()})))
    z = torch.randn(2, G.latent_dim)
    assert torch.equal(G.eval()(z), H.eval()(z))


def test_export_refuses_individual_fits():
    from breastgan.generation.kinds import LoadedGenerator
    from breastgan.sharing.package import PackageError, refuse_individual_fits

    bad = LoadedGenerator([make(sampling="interpolate", bank_size=3)], {}, [], torch.device("cpu"))
    with pytest.raises(PackageError, match="code_bank"):
        refuse_individual_fits(bad, "run/checkpoints/step_1")
    refuse_individual_fits(LoadedGenerator([make()], {}, [], torch.device("cpu")), "ok")  # aggregate statistics pass to the audit
