"""Downstream classifiers of the utility experiment, by name.

Contract: ``CLASSIFIERS.build(name, args, num_classes=C, image_size=S)`` returns an ``nn.Module``
that takes (N, 1, S, S) float images in [0, 1] and returns (N, C) log-probabilities (log-softmax).
Any resizing, channel stacking and normalisation a model needs happens inside its ``forward``, so
real and synthetic images cannot be preprocessed differently (methods.md section 4, pitfall 4),
and the log-softmax output is what the metrics check (pitfall 5). Add a classifier by registering
a builder with its own pydantic argument model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from breastgan.registry import Registry

CLASSIFIERS: Registry = Registry("classifier")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyCNNArgs(_Args):
    channels: tuple[int, int, int, int] = Field((16, 32, 64, 128), description="filters of the four conv layers")
    hidden: int = Field(128, ge=1, description="units of the first fully connected layer")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout between the two fully connected layers")


class StudyCNN(nn.Module):
    """The model-sharing study's CNN: 4 x (conv 3x3, batch norm, ReLU, max-pool 2), FC, batch norm, ReLU, dropout, FC, log-softmax.

    About 1.15M parameters at 128x128 with the defaults (the study reports about 1.1M); the first
    FC layer scales with the input size, so at 64x64 the network has about 0.36M.
    """

    def __init__(self, num_classes: int, image_size: int, channels=(16, 32, 64, 128), hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"cnn: image_size must be a multiple of 16 (four 2x poolings), got {image_size}")
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = image_size // 16
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5  # fixed affine map of [0, 1]; the same for every image whatever its source
        h = self.features(x).flatten(1)
        h = self.dropout(F.relu(self.bn1(self.fc1(h))))
        return F.log_softmax(self.fc2(h), dim=1)


@CLASSIFIERS.register("cnn", args=StudyCNNArgs, summary="the model-sharing study's CNN (4 conv + 2 FC, batch norm, dropout, log-softmax)")
def build_cnn(num_classes: int, image_size: int, channels=(16, 32, 64, 128), hidden: int = 128, dropout: float = 0.5) -> nn.Module:
    return StudyCNN(num_classes, image_size, tuple(channels), hidden, dropout)


class SwinArgs(_Args):
    model_name: str = Field("swin_tiny_patch4_window7_224", description="timm model name")
    input_size: int = Field(224, ge=32, description="images are area-resampled to this side (the study: 224)")
    weights: Path | None = Field(None, description="local ImageNet weights (.safetensors, or a state dict .pth/.pt); none: from scratch")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0)
    timm_kwargs: dict = Field(default_factory=dict, description="extra timm.create_model arguments (e.g. a smaller embed_dim for a reduced CPU run)")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"swin_t weights: {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # common checkpoint wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


class SwinClassifier(nn.Module):
    """Swin-T from timm: grey [0, 1] -> area resample to ``input_size`` -> stacked to 3 channels -> ImageNet normalisation -> log-softmax."""

    def __init__(self, num_classes: int, model_name: str, input_size: int, weights: Path | None, drop_path_rate: float, timm_kwargs: dict):
        super().__init__()
        import timm

        kwargs = {"img_size": input_size, **timm_kwargs}
        self.net = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=3, drop_path_rate=drop_path_rate, **kwargs)
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self._load(Path(weights))

    def _load(self, path: Path) -> None:
        sd = _read_state_dict(path)
        own = self.net.state_dict()
        # the ImageNet head (1000 classes) is replaced; every other tensor must match
        keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape and not k.startswith("head")}
        missing = [k for k in own if k not in keep and not k.startswith("head") and "relative_position_index" not in k and "attn_mask" not in k]
        if missing:
            raise ValueError(f"{path}: weights do not fit {type(self.net).__name__} (missing or mis-shaped: {missing[:5]}{'...' if len(missing) > 5 else ''})")
        self.net.load_state_dict(keep, strict=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] -> the network's input (also the frozen-branch embedding's, models/backbones.py)."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(self.prepare(x)), dim=1)


@CLASSIFIERS.register("swin_t", args=SwinArgs, summary="Swin-T (timm), 224x224 area-resampled, grey stacked to 3 channels; scratch or local ImageNet weights")
def build_swin(num_classes: int, image_size: int, model_name: str = "swin_tiny_patch4_window7_224", input_size: int = 224,
               weights: Path | None = None, drop_path_rate: float = 0.1, timm_kwargs: dict | None = None) -> nn.Module:
    return SwinClassifier(num_classes, model_name, input_size, weights, drop_path_rate, timm_kwargs or {})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
