"""Named, weighted loss terms added to the adversarial loss, each logged on its own.

``loss: {name: wgan-gp, gp_lambda: 10, terms: [{term: drift, weight: 0.001}]}``. A term belongs to a
phase (the discriminator's or the generator's update), may draw random numbers (drawn with the
step's other draws, so resume and multi-process runs stay exact), and returns an unweighted value;
the recipe adds ``weight * value`` and logs the value as ``<term>``.

The adversarial losses' own ``gp_lambda`` / ``drift`` options are read as terms too (see
:func:`terms_from_loss`): the gradient penalty has one implementation, and this module is the only
place that decides when it applies. Image-to-image recipes register cycle, identity, L1 and
perceptual terms here as well.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.losses.gradient_penalty import gradient_penalty
from breastgan.registry import Registry

LOSS_TERMS: Registry[Any] = Registry("loss term")

Phase = Literal["discriminator", "generator"]


@dataclass
class TermInputs:
    """What a term may look at in one phase (tensors on the device, model range [-1, 1])."""

    real: torch.Tensor | None = None
    fake: torch.Tensor | None = None
    d_real: torch.Tensor | None = None
    d_fake: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # this rank's labels (conditional runs)
    labels_fake: torch.Tensor | None = None
    aux_real: torch.Tensor | None = None  # auxiliary-classifier logits of D (AC-GAN)
    aux_fake: torch.Tensor | None = None
    critic: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None  # D with this step's augmentation
    extra: dict[str, Any] = field(default_factory=dict)


class LossTerm(ABC):
    phase: Phase
    #: the scalar name the term's value is logged under
    log_name: str = "term"
    #: needs the discriminator's auxiliary-classifier logits
    needs_aux = False

    def __init__(self, weight: float, **_: Any):
        self.weight = weight

    def draw(self, env: Any) -> Any:
        """Random numbers this term needs, drawn at the global batch size (called once per phase)."""
        return None

    @abstractmethod
    def __call__(self, t: TermInputs, draws: Any) -> torch.Tensor: ...


class _TermArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(ge=0, description="multiplies the term's value in its phase's loss")


class GradientPenaltyArgs(_TermArgs):
    target: float = Field(1.0, gt=0, description="target gradient norm (1 in WGAN-GP)")


@LOSS_TERMS.register("gradient_penalty", args=GradientPenaltyArgs,
                     summary="WGAN-GP: E[(||grad D(x_hat)|| - target)^2] at random interpolates of real and fake (D phase)")
class GradientPenaltyTerm(LossTerm):
    phase: Phase = "discriminator"
    log_name = "gp"

    def __init__(self, weight: float, target: float = 1.0):
        super().__init__(weight)
        self.target = target

    def draw(self, env: Any) -> torch.Tensor:
        return env.local(env.rand(env.global_batch, 1, 1, 1))

    def __call__(self, t: TermInputs, draws: torch.Tensor) -> torch.Tensor:
        return gradient_penalty(t.critic, t.real, t.fake.float(), draws, t.labels, self.target)


@LOSS_TERMS.register("drift", args=_TermArgs, summary="ProGAN's drift: E[D(x)^2] keeps critic scores near 0 (D phase; weight 1e-3)")
class DriftTerm(LossTerm):
    phase: Phase = "discriminator"
    log_name = "drift"

    def __call__(self, t: TermInputs, draws: Any) -> torch.Tensor:
        return (t.d_real.float() ** 2).mean()


class AuxArgs(_TermArgs):
    phase: Phase = Field(description="discriminator: classify real and fake images; generator: make fakes classifiable")


@LOSS_TERMS.register("aux_classification", args=AuxArgs,
                     summary="AC-GAN: cross-entropy of D's auxiliary classifier (needs discriminator aux_classifier: true)")
class AuxClassificationTerm(LossTerm):
    needs_aux = True

    def __init__(self, weight: float, phase: Phase):
        super().__init__(weight)
        self.phase = phase
        self.log_name = f"aux_cls_{phase[0]}"

    def __call__(self, t: TermInputs, draws: Any) -> torch.Tensor:
        if t.aux_fake is None:
            raise ValueError("aux_classification: the discriminator returned no auxiliary logits (set model.discriminator.aux_classifier: true)")
        fake = F.cross_entropy(t.aux_fake.float(), t.labels_fake)
        if self.phase == "generator":
            return fake
        return F.cross_entropy(t.aux_real.float(), t.labels) + fake


class TermSpecBase(BaseModel):
    model_config = ConfigDict(extra="allow")
    term: str


def build_term(spec: dict[str, Any], where: str) -> LossTerm:
    spec = dict(spec)
    name = spec.pop("term")
    entry = LOSS_TERMS.entry(name)
    return entry.obj(**entry.validate_args(spec, where).model_dump())


def draw_terms(terms: list[LossTerm], phase: Phase, env: Any) -> list[Any]:
    """Each term's random draws for ``phase`` (None for the other phase's terms), in term order."""
    return [t.draw(env) if t.phase == phase else None for t in terms]


def add_terms(terms: list[LossTerm], phase: Phase, loss: torch.Tensor, inputs: TermInputs, draws: list[Any] | None,
              out: dict[str, torch.Tensor]) -> torch.Tensor:
    """``loss + sum(weight * value)`` over ``phase``'s terms, added in order; each value logged in ``out`` under its name."""
    for term, d in zip(terms, draws if draws is not None else [None] * len(terms)):
        if term.phase != phase:
            continue
        value = term(inputs, d)
        loss = loss + term.weight * value
        out[term.log_name] = value.detach()
    return loss


def terms_from_loss(loss: Any, extra: list[dict[str, Any]] | None = None) -> list[LossTerm]:
    """The terms a run uses: those implied by the adversarial loss's options, then the configured ones.

    Order matters for bit-exact sums: drift (part of the critic loss in ProGAN) comes before the
    gradient penalty, as in the loss the reference implementations write out.
    """
    terms: list[LossTerm] = []
    if getattr(loss, "drift", 0.0):
        terms.append(DriftTerm(loss.drift))
    if getattr(loss, "gp_lambda", 0.0) > 0:
        terms.append(GradientPenaltyTerm(loss.gp_lambda, getattr(loss, "gp_target", 1.0)))
    for i, spec in enumerate(extra or []):
        terms.append(build_term(spec, f"loss.terms.{i}"))
    return terms
