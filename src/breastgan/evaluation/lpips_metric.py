"""LPIPS (Zhang et al. 2018), real-fake (fidelity) and fake-fake (diversity), without downloads.

The computation is the ``lpips`` package's v0.1 (scaling layer, unit-normalised backbone activations,
squared differences weighted by the learned 1x1 "lin" layers, spatial mean, sum over layers), re-done
here so that the backbone's ImageNet weights come from a local file: the package's own constructor
downloads them through torchvision. The lin layers ship inside the ``lpips`` wheel and are read
from there (``weights_only=True``).

Input policy: grey [0, 1] images replicated to 3 channels and mapped to [-1, 1] (``2 x - 1``), no
resize, no quantisation. Without backbone weights the metric refuses to run rather than report
numbers from a random network; tests pass ``allow_random_backbone=True`` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.evaluation.bootstrap import mean_ci
from breastgan.evaluation.context import EvaluationContext, MetricResult, MetricSkipped, register_metric
from breastgan.evaluation.ssim import random_pairs, real_fake_pairs

# torchvision feature indices after which LPIPS taps an activation (the ReLU outputs of lpips' slices)
TAPS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
POLICY = {"channels": "replicate grey to 3", "resize": "none", "quantisation": "none", "range": "2 x - 1 in [-1, 1], then LPIPS scaling layer"}


def _torchvision_features(net: str) -> torch.nn.Sequential:
    import torchvision

    if net == "alex":
        return torchvision.models.alexnet(weights=None).features
    if net == "vgg":
        return torchvision.models.vgg16(weights=None).features
    raise ValueError(f"LPIPS backbone must be 'alex' or 'vgg', got {net!r}")


def _backbone_state(state: dict[str, torch.Tensor], net: str) -> dict[str, torch.Tensor]:
    """Accept torchvision checkpoints (``features.N.*``), bare features (``N.*``) or lpips modules (``net.sliceK.N.*``)."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "features":
            out[".".join(parts[1:])] = v
        elif parts[0] == "net" and len(parts) >= 4 and parts[1].startswith("slice"):
            out[".".join(parts[2:])] = v
        elif parts[0].isdigit():
            out[k] = v
    if not out:
        raise ValueError(f"no {net} backbone parameters found (expected keys like 'features.0.weight')")
    return out


def lin_weights_path(net: str) -> Path:
    import lpips

    return Path(os.path.dirname(lpips.__file__)) / "weights" / "v0.1" / f"{net}.pth"


class LPIPS(torch.nn.Module):
    """LPIPS v0.1 distance with an AlexNet or VGG-16 backbone; ``forward(x, y)`` on [0, 1] grey -> (N,)."""

    def __init__(self, net: str = "alex", backbone_weights: str | Path | dict[str, torch.Tensor] | None = None,
                 allow_random_backbone: bool = False):
        super().__init__()
        self.net_name = net
        features = _torchvision_features(net)
        if backbone_weights is None:
            if not allow_random_backbone:
                raise ValueError(f"LPIPS-{net} needs ImageNet backbone weights: pass backbone_weights=<path to torchvision "
                                 f"{'alexnet' if net == 'alex' else 'vgg16'} state dict> (downloads are not possible here)")
        else:
            state = backbone_weights if isinstance(backbone_weights, dict) else torch.load(Path(backbone_weights), map_location="cpu", weights_only=True)
            features.load_state_dict(_backbone_state(state, net))
        self.features = features[: TAPS[net][-1]]
        lin = torch.load(lin_weights_path(net), map_location="cpu", weights_only=True)
        self.lins = torch.nn.ParameterList([torch.nn.Parameter(lin[f"lin{i}.model.1.weight"], requires_grad=False) for i in range(len(TAPS[net]))])
        self.requires_grad_(False)
        self.eval()

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        taps = set(TAPS[self.net_name])
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i + 1 in taps:
                outs.append(x)
        return outs

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def prep(t: torch.Tensor) -> torch.Tensor:
            t = t.float()
            if t.shape[1] == 1:
                t = t.expand(-1, 3, -1, -1)
            return ((2 * t - 1) - SHIFT) / SCALE

        # one backbone pass for both inputs
        acts = self._activations(torch.cat([prep(x), prep(y)]))
        total = torch.zeros(x.shape[0])
        for a, w in zip(acts, self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = a.split(x.shape[0])
            total = total + F.conv2d((fx - fy) ** 2, w).mean((1, 2, 3))
        return total


class LPIPSOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    net: Literal["alex", "vgg"] = "alex"
    backbone_weights: str | None = Field(None, description="local torchvision AlexNet/VGG-16 ImageNet state dict")
    allow_random_backbone: bool = Field(False, description="only for pipeline tests: numbers from a random backbone mean nothing")
    protocol: Literal["random", "paired", "nearest"] = "random"
    n_pairs: int = Field(1000, ge=2)
    batch_size: int = Field(64, ge=1)


@register_metric("lpips", args=LPIPSOptions, summary="learned perceptual distance; real-fake (lower = closer) and fake-fake (higher = more diverse)",
                 policy=POLICY)
def lpips_metric(ctx: EvaluationContext, net: str, backbone_weights: str | None, allow_random_backbone: bool, protocol: str,
                 n_pairs: int, batch_size: int) -> list[MetricResult]:
    if backbone_weights is None and not allow_random_backbone:
        raise MetricSkipped(f"LPIPS needs ImageNet {'AlexNet' if net == 'alex' else 'VGG-16'} backbone weights from a local file "
                            "(no downloads): pass options {'lpips': {'backbone_weights': '<torchvision state dict .pth>'}}")
    model = LPIPS(net, backbone_weights, allow_random_backbone)
    real, fake = ctx.pixels("real"), ctx.pixels("fake")
    ri, fi = real_fake_pairs(real, fake, protocol, n_pairs, ctx.seed)
    a, b = random_pairs(fake.shape[0], fake.shape[0], n_pairs, ctx.seed + 1, distinct=True)

    def run(x: torch.Tensor, y: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x[p], y[q]) for p, q in zip(i.split(batch_size), j.split(batch_size))])

    rf, ff = run(real, fake, ri, fi), run(fake, fake, a, b)
    details: dict[str, Any] = {"net": net, "backbone_weights": backbone_weights or "RANDOM (test only)", "lin_layers": str(lin_weights_path(net))}
    warn = [] if backbone_weights else ["LPIPS computed with a random backbone: the value is meaningless"]
    return [
        MetricResult("lpips_real_fake", float(rf.mean()), mean_ci(rf, seed=ctx.seed), {"real": real.shape[0], "fake": fake.shape[0], "pairs": len(rf)},
                     True, {**details, "protocol": protocol}, POLICY, warn),
        MetricResult("lpips_fake_fake", float(ff.mean()), mean_ci(ff, seed=ctx.seed), {"fake": fake.shape[0], "pairs": len(ff)},
                     False, {**details, "protocol": "random distinct synthetic pairs (diversity)"}, POLICY, list(warn)),
    ]
