"""Loss terms of image-to-image translation (CycleGAN, pix2pix), registered in :data:`LOSS_TERMS`.

Each is an L1 distance between two tensors the recipe puts in ``TermInputs.extra`` (model range
[-1, 1]) and is logged under its own name, per direction where there are two:

- ``cycle``: ||G_BA(G_AB(a)) - a||_1 (and the B -> A -> B twin); reference weight 10 per direction.
- ``identity``: ||G_AB(b) - b||_1 - a translator fed its target domain should leave it alone;
  reference weight 0.5 x the cycle weight. Zero for an identity generator.
- ``pix2pix_l1``: ||G(a) - b||_1 against the paired target; reference weight 100.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from breastgan.losses.terms import LOSS_TERMS, LossTerm, Phase, TermInputs, _TermArgs


class PairL1Args(_TermArgs):
    direction: str = Field("", description="suffix of the logged name and of the extra keys (e.g. 'a', 'b'); '' for pix2pix")


class _PairL1(LossTerm):
    """mean |extra[output] - extra[target]| for the keys this term names."""

    phase: Phase = "generator"
    base: str = ""
    output_key: str = ""
    target_key: str = ""

    def __init__(self, weight: float, direction: str = ""):
        super().__init__(weight)
        self.direction = direction
        suffix = f"_{direction}" if direction else ""
        self.log_name = f"{self.base}{suffix}"
        self._out, self._tgt = f"{self.output_key}{suffix}", f"{self.target_key}{suffix}"

    def __call__(self, t: TermInputs, draws: Any) -> torch.Tensor:
        missing = [k for k in (self._out, self._tgt) if k not in t.extra]
        if missing:
            raise ValueError(f"loss term {self.log_name!r}: the recipe provided no {missing} (it has {sorted(t.extra)})")
        return (t.extra[self._out].float() - t.extra[self._tgt].float()).abs().mean()


@LOSS_TERMS.register("cycle", args=PairL1Args, summary="CycleGAN cycle consistency ||G_BA(G_AB(a)) - a||_1 per direction (weight 10)")
class CycleTerm(_PairL1):
    base, output_key, target_key = "cycle", "reconstructed", "real"


@LOSS_TERMS.register("identity", args=PairL1Args, summary="CycleGAN identity ||G_AB(b) - b||_1 per direction (weight 0.5 x cycle)")
class IdentityTerm(_PairL1):
    base, output_key, target_key = "identity", "identity", "target_real"


@LOSS_TERMS.register("pix2pix_l1", args=PairL1Args, summary="pix2pix L1 to the paired target ||G(a) - b||_1 (weight 100)")
class Pix2PixL1Term(_PairL1):
    base, output_key, target_key = "l1", "fake", "target"
