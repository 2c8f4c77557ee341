"""The generator's perceptual term in a frozen branch's feature space (DGAN-WP-TL).

``loss: {terms: [{term: perceptual, weight: 5}]}`` or the ``dgan_wp_tl`` recipe's
``perceptual_weight``. An unconditional generator has no paired target image, so the term matches
feature *statistics* rather than paired features: for each level of the frozen branch, the
per-channel mean and standard deviation over (batch, height, width) of the fakes' features are
pulled towards those of the current real batch,

    value = sum_levels mean_c [ (mu_fake_c - mu_real_c)^2 + (sigma_fake_c - sigma_real_c)^2 ].

Real statistics carry no gradient; the fakes' gradient flows through the frozen branch into G.
The recipe hands the term the branch (``extra["features"]``) and the last discriminator phase's
real batch (``real``); see docs/models/dgan-wp-tl.md for why statistics and not pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from breastgan.losses.terms import LOSS_TERMS, LossTerm, Phase, TermInputs, _TermArgs


def channel_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = f.float().transpose(0, 1).flatten(1)  # (C, N*H*W)
    return flat.mean(1), flat.std(1, unbiased=False)


def feature_statistics_distance(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    total = fake_feats[0].new_zeros((), dtype=torch.float32)
    for ff, fr in zip(fake_feats, real_feats, strict=True):
        mf, sf = channel_stats(ff)
        mr, sr = channel_stats(fr.detach())
        total = total + ((mf - mr) ** 2).mean() + ((sf - sr) ** 2).mean()
    return total


@LOSS_TERMS.register("perceptual", args=_TermArgs,
                     summary="G phase: match per-channel feature mean/std of fakes to the real batch in D's frozen branch (DGAN-WP-TL)")
class PerceptualTerm(LossTerm):
    phase: Phase = "generator"
    log_name = "perceptual"

    def __call__(self, t: TermInputs, draws: Any) -> torch.Tensor:
        features = t.extra.get("features")
        if features is None or t.real is None:
            raise ValueError("perceptual term: the recipe gave no frozen feature branch or real batch; use recipe: {name: dgan_wp_tl} "
                             "(or a recipe that passes extra['features'] and real to generator terms)")
        with torch.no_grad():
            real_feats = features(t.real)
        return feature_statistics_distance(features(t.fake), real_feats)
