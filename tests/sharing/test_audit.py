"""Privacy audit controls: a copying generator fails, a held-out generator passes, canaries are found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from breastgan.data.phantom import PhantomDataset
from breastgan.sharing.audit import roc_auc, run_audit, tpr_at_fpr

CFG = {"n_samples": 200, "n_boot": 30, "n_permutations": 100, "n_candidates": 100, "inversion": {"enabled": False}}


@pytest.fixture(scope="module")
def sets():
    train = PhantomDataset(n=128, size=32, seed=1).images
    holdout = PhantomDataset(n=128, size=32, seed=2).images
    other = PhantomDataset(n=256, size=32, seed=3).images  # held-out real images the "holdout generator" returns
    return train, holdout, other


class ImagePool:
    """A 'generator' that returns images from a fixed pool (seeded draws with replacement)."""

    def __init__(self, images: torch.Tensor, flip: bool = False):
        self.images, self.flip = images, flip

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = self.images[torch.randint(0, len(self.images), (n,), generator=g)]
        return x.flip(-1) if self.flip else x


def test_auc_and_tpr_at_fpr():
    pos, neg = torch.arange(10.0, 20.0), torch.arange(0.0, 10.0)
    assert roc_auc(pos, neg) == 1.0 and roc_auc(neg, pos) == 0.0
    assert roc_auc(torch.ones(5), torch.ones(7)) == 0.5  # ties count half
    assert tpr_at_fpr(pos, neg) == 1.0 and tpr_at_fpr(neg, pos) == 0.0
    neg = torch.arange(100.0)
    # 1% of 100 negatives: one false positive (99) allowed, so the threshold is the second-highest negative (98)
    assert tpr_at_fpr(torch.tensor([98.5, 99.5, 50.0]), neg, 0.01) == pytest.approx(2 / 3)


def test_copy_generator_fails(sets):
    train, holdout, _ = sets
    for flip in (False, True):  # a flipped copy is still a copy
        r = run_audit(ImagePool(train, flip), train, holdout, CFG)
        assert not r["passed"]
        failed = {c["name"] for c in r["checks"] if not c["passed"]}
        assert {"near_copy_fraction", "dcr_ratio", "dcr_closer", "mia_auc", "mia_tpr_at_1fpr"} <= failed
        assert r["results"]["near_copy_fraction"] > 0.9 and r["results"]["dcr_ratio"] < 0.1


def test_holdout_generator_passes(sets):
    train, holdout, other = sets
    r = run_audit(ImagePool(other), train, holdout, CFG)
    assert r["passed"], r["checks"]
    assert 0.35 < r["results"]["mia_auc"] < 0.65 and 0.35 < r["results"]["dcr_closer"] < 0.65
    lo, hi = r["ci95"]["mia_auc"]
    assert lo <= r["results"]["mia_auc"] <= hi
    assert r["n"] == {"synthetic": 200, "train": 128, "holdout": 128, "candidates_per_side": 100, "canaries": 0}


def _canaries() -> torch.Tensor:
    c = torch.full((3, 1, 32, 32), 0.1)
    c[0, :, ::4] = 0.95  # stripes
    c[1, :, :, ::3] = 0.9
    c[2, :, 8:24, 8:24] = 0.85  # a bright square
    return c


def test_planted_canaries_are_found(sets):
    train, holdout, other = sets
    canaries = _canaries()
    train_c = torch.cat([train, canaries])

    class Memoriser(ImagePool):
        def sample(self, n, seed=0):
            x = super().sample(n, seed)
            x[::20] = canaries[torch.arange(len(x[::20])) % 3]  # every 20th sample is a memorised canary
            return x

    r = run_audit(Memoriser(other), train_c, holdout, CFG, canaries=canaries)
    assert [c["found"] for c in r["details"]["canaries"]] == [True, True, True]
    assert not r["passed"] and r["results"]["canaries_found"] == 3
    clean = run_audit(ImagePool(other), train_c, holdout, CFG, canaries=canaries)
    assert clean["results"]["canaries_found"] == 0 and clean["passed"]


class Mixture(nn.Module):
    """A differentiable generator whose outputs are softmax mixtures of stored images: it can reproduce
    the stored images exactly (memorised members) but other images only approximately."""

    def __init__(self, images: torch.Tensor, latent_dim: int = 8):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels = latent_dim, 0, 1
        self.image_size = tuple(images.shape[-2:])
        self.register_buffer("bank", images * 2 - 1)
        self.proj = nn.Linear(latent_dim, len(images), bias=False)
        nn.init.normal_(self.proj.weight, 0, 0.35)  # softmax logits of moderate size: not saturated, so invertible

    def forward(self, z, labels=None):
        w = torch.softmax(self.proj(z) * 3, dim=1)
        return torch.einsum("nk,kchw->nchw", w, self.bank)


class MixtureGenerator:
    def __init__(self, module):
        self.models = [module]

    @torch.no_grad()
    def sample(self, n, seed=0):
        z = torch.randn(n, self.models[0].latent_dim, generator=torch.Generator().manual_seed(seed))
        return (self.models[0](z) + 1) / 2


def test_white_box_inversion_separates_members(sets):
    train, holdout, _ = sets
    members = train[:24]
    torch.manual_seed(0)  # Mixture's projection is drawn from the global generator
    G = Mixture(members)
    r = run_audit(MixtureGenerator(G), members, holdout[:24], {**CFG, "n_candidates": 24, "inversion": {"steps": 100}})
    assert r["results"]["mia_auc_inversion"] > 0.85 and not r["passed"]
    assert all(p.requires_grad for p in G.parameters())  # the attack leaves the generator as it was


def test_inversion_runs_on_a_trained_breastgan_generator(tiny_run, holdout_images):
    from breastgan.sharing.audit import audit_run

    r = audit_run(tiny_run, holdout_images, config={"n_samples": 64, "n_boot": 10, "n_candidates": 16, "inversion": {"steps": 5, "restarts": 1}})
    assert "mia_auc_inversion" in r["results"] and r["n"]["train"] == 128  # training set rebuilt from the run's config
    assert 0.0 <= r["results"]["mia_auc_inversion"] <= 1.0


def test_bad_inputs_are_named(sets):
    train, holdout, _ = sets
    with pytest.raises(ValueError, match="at least 10 held-out"):
        run_audit(ImagePool(train), train, holdout[:5], CFG)
    with pytest.raises(ValueError, match="differ in shape"):
        run_audit(ImagePool(train), train, holdout[:, :, :16, :16], CFG)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_audit(ImagePool(train), train * 2 - 1, holdout, CFG)
