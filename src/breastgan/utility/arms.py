"""Augmentation arms: what is added to the receiving centre's training data, and how classes stay balanced.

Arms (methods.md section 4): ``none``; ``synthetic`` images from one shared generator, or from
several (split by ``share``, e.g. half each); ``real`` images of another centre (the expected upper
bound). With ``balance: true`` the base set holds equally many images of both classes (the smaller
class in full) and every added image of the added class is matched by one more real image of the
other class from the receiving centre, as in the study. Each class is taken in one seeded order,
so the base set of the 'none' arm is contained in every other arm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from breastgan.utility.data import Pool, TrainingSet, balanced_order, pool_to_set


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratorRef(_Strict):
    source: Path = Field(description="a breastgan run directory, checkpoint directory or exported generator package")
    share: float = Field(1.0, gt=0, description="relative share of this arm's synthetic images")
    checkpoint: str | int = "latest"
    ema: bool = True
    snapshots: Literal["all"] | list[int] | None = Field(None, description="sample a snapshot ensemble instead of one checkpoint")
    label: str | int | None = Field(None, description="class to sample from a conditional generator")


class NoneArm(_Strict):
    kind: Literal["none"]
    name: str = "None"


class SyntheticArm(_Strict):
    kind: Literal["synthetic"]
    name: str
    generators: list[GeneratorRef] = Field(min_length=1)
    n: int | None = Field(None, ge=1, description="synthetic images added (default: the experiment's n_added)")


class RealArm(_Strict):
    kind: Literal["real"]
    name: str
    centre: str
    splits: list[str] | None = Field(None, description="which of that centre's splits to take (default: all; the centre is not tested on)")
    n: int | None = Field(None, ge=1, description="images added (default: all images of the added class there)")


ArmSpec = Annotated[Union[NoneArm, SyntheticArm, RealArm], Field(discriminator="kind")]


def shares_to_counts(n: int, shares: list[float]) -> list[int]:
    """Split n by relative shares with the largest-remainder rule (counts sum to n exactly)."""
    total = float(sum(shares))
    raw = [n * s / total for s in shares]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(len(shares)), key=lambda i: (-(raw[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def generator_label(name: str) -> str:
    return f"synthetic:{Path(name).name}"


def sample_synthetic(arm: SyntheticArm, n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """(source tag, (n_i, 1, H, W) images in [0, 1]) per generator of the arm."""
    from breastgan.generation import load_generator

    out = []
    for ref, k in zip(arm.generators, shares_to_counts(n, [g.share for g in arm.generators])):
        if k == 0:
            continue
        if not ref.source.exists():
            raise FileNotFoundError(f"arm {arm.name!r}: generator {ref.source} not found")
        gen = load_generator(ref.source, checkpoint=ref.checkpoint, ema=ref.ema, snapshots=ref.snapshots)
        if ref.label is not None and gen.kind != "noise":
            raise ValueError(f"arm {arm.name!r}: generator {ref.source} is a {gen.kind} model; label applies to noise generators")
        images = gen.sample(k, seed=seed, labels=ref.label) if ref.label is not None else gen.synthesize(k, seed=seed)
        out.append((generator_label(str(ref.source)), images))
    return out


def compose(
    base: Pool,
    added: list[TrainingSet],
    *,
    add_label: int,
    balance: bool,
    order_seed: int,
    size: int,
    on_shortage: Literal["error", "allow_imbalance"] = "error",
) -> tuple[TrainingSet, dict[str, Any]]:
    """The training set of one arm: real base images of the receiving centre + added images (+ matched real images)."""
    other = 1 - add_label
    n_added = sum(len(a) for a in added)
    for a in added:
        if a.labels.numel() and bool((a.labels != add_label).any()):
            raise ValueError("added images must all carry the added class label")
    notes: list[str] = []
    if balance:
        order = balanced_order(base, order_seed)
        pos, neg = order.get(add_label, []), order.get(other, [])
        k = min(len(pos), len(neg))
        if k == 0:
            raise ValueError(f"{base.source}: the training data lacks one class ({base.counts(['0', '1'])}); cannot balance")
        extra = n_added
        if k + extra > len(neg):
            msg = (f"{base.source}: balancing {n_added} added images needs {k + extra} real images of class {other} "
                   f"but the receiving centre's training data has {len(neg)}; add fewer images or set balance: false")
            if on_shortage == "error":
                raise ValueError(msg)
            notes.append(msg)
            extra = len(neg) - k
        index = pos[:k] + neg[: k + extra]
    else:
        index = list(range(len(base)))
    real = pool_to_set(base.subset(sorted(index)), size)
    train = TrainingSet.concat([real, *added]) if added else real
    counts = {str(c): int((train.labels == c).sum()) for c in (0, 1)}
    composition = {"n": len(train), "by_class": counts, "by_source": train.source_counts(), "added": n_added,
                   "receiving_real": len(real), "intensity": intensity_by_source(train), "notes": notes}
    return train, composition


def intensity_by_source(data: TrainingSet) -> dict[str, dict[str, float]]:
    """Per source: mean pixel value and mean within-image standard deviation (grey, structureless
    synthetic images, e.g. from an EMA copy that barely moved, show up as a near-zero std)."""
    out = {}
    for src in sorted(set(data.sources)):
        idx = torch.tensor([i for i, s in enumerate(data.sources) if s == src])
        x = data.images[idx]
        out[src] = {"mean": round(float(x.mean()), 4), "within_image_std": round(float(x.flatten(1).std(dim=1).mean()), 4)}
    return out
