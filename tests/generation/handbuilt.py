"""Hand-built run directories of every kind, and tiny test-only translator architectures.

A run here is what a recipe would leave behind, written directly: ``model.json`` (through
``run_dir.write_model_file``), one checkpoint with safetensors weights, ``meta.json`` (written last),
an (empty) training state, and a data-only ``config.yaml`` (export summarises the training data from it).
The architectures are registered in breastgan's generator registry by this test module only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn

from breastgan.models.registry import GENERATORS
from breastgan.models.weights import state_dict_cpu
from breastgan.run_dir import ComponentSpec, ModelFile, write_model_file

PHANTOM_CONFIG = {"name": "handbuilt", "data": {"source": {"dataset": "phantom", "n": 32, "size": 32, "seed": 4}}}


class TinyTranslatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(1, ge=1, le=4)
    width: int = Field(4, ge=1, le=64)
    size_multiple: int = Field(1, ge=1, le=64)


@GENERATORS.register("test-translator", args=TinyTranslatorArgs, summary="test only: 3x3 conv, tanh, 1x1 conv", tags=("translation",))
class TinyTranslator(nn.Module):
    built = 0  # instances made (tests check that refused files build nothing)

    def __init__(self, channels: int, width: int, size_multiple: int):
        super().__init__()
        TinyTranslator.built += 1
        self.channels, self.size_multiple = channels, size_multiple
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, channels, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@GENERATORS.register("test-cropper", args=TinyTranslatorArgs, summary="test only: breaks the translator contract (crops)", tags=("translation",))
class Cropper(TinyTranslator):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 1:, 1:]


def translator(seed: int, channels: int = 1, size_multiple: int = 1) -> TinyTranslator:
    torch.manual_seed(seed)
    return TinyTranslator(channels, 4, size_multiple)


def dcgan(seed: int, **args: Any) -> nn.Module:
    full = GENERATORS.entry("dcgan").validate_args({"image_size": 32, "latent_dim": 8, "base_width": 8, **args}).model_dump()
    torch.manual_seed(seed)
    G = GENERATORS.get("dcgan")(**full).eval()
    with torch.no_grad():  # DCGAN's init (std 0.02) makes near-constant images; these weights make images that vary with z
        for p in G.parameters():
            if p.ndim == 4:
                p.normal_(0, 0.15)
    return G


def make_run(root: Path, *, kind: str, components: dict[str, tuple[str, dict[str, Any], str]], weights: dict[str, nn.Module],
             ema: dict[str, nn.Module] | None = None, tensors: dict[str, dict[str, torch.Tensor]] | None = None,
             inputs: dict[str, Any] | None = None, output: dict[str, Any] | None = None, class_names: list[str] | None = None,
             step: int = 1, record_model_in_checkpoint: bool = False) -> Path:
    """``components``: role -> (arch, args, checkpoint module); ``weights`` / ``ema``: module -> network;
    ``tensors``: other checkpoint modules as raw tensors (an inversion's codes)."""
    root.mkdir(parents=True)
    model = ModelFile(kind=kind, components={r: ComponentSpec(arch=a, args=args, module=m) for r, (a, args, m) in components.items()},
                      inputs=inputs or {}, output=output or {}, class_names=class_names or [])
    write_model_file(root, model)
    ckpt = root / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    for name, net in weights.items():
        save_file(state_dict_cpu(net), str(ckpt / f"{name}.safetensors"))
    for name, net in (ema or {}).items():
        save_file(state_dict_cpu(net), str(ckpt / f"{name}_ema.safetensors"))
    for name, t in (tensors or {}).items():
        save_file({k: v.contiguous() for k, v in t.items()}, str(ckpt / f"{name}.safetensors"))
    torch.save({"step": step}, ckpt / "training_state.pt")
    meta = {"step": step, "modules": sorted([*weights, *(tensors or {})]), "ema_modules": sorted(ema or {})}
    if record_model_in_checkpoint:
        meta["model"] = model.model_dump(mode="json")
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (root / "config.yaml").write_text(yaml.safe_dump(PHANTOM_CONFIG))
    return root


def translation_run(root: Path, *, size_multiple: int = 1, directions=("a2b", "b2a"), with_ema: bool = True) -> Path:
    comps = {d: ("test-translator", {"channels": 1, "width": 4, "size_multiple": size_multiple}, f"g_{d}") for d in directions}
    raw = {f"g_{d}": translator(10 + i, size_multiple=size_multiple) for i, d in enumerate(directions)}
    ema = {f"g_{d}": translator(20 + i, size_multiple=size_multiple) for i, d in enumerate(directions)} if with_ema else {}
    return make_run(root, kind="translation", components=comps, weights=raw, ema=ema,
                    inputs={"image": {"channels": 1, "size_multiple": size_multiple}},
                    output={"channels": 1, "image_size": [32, 32], "bit_depth": 16, "value_range": [0.0, 1.0]})


def inversion_run(root: Path, *, count: int = 5, conditional: bool = False) -> tuple[Path, nn.Module, dict[str, torch.Tensor]]:
    args = {"image_size": 32, "latent_dim": 8, "base_width": 8, "num_classes": 2 if conditional else 0, "embed_dim": 4}
    G = dcgan(3, **args)
    g = torch.Generator().manual_seed(0)
    codes = {"codes": torch.randn(count, 8, generator=g)}
    if conditional:
        codes["labels"] = torch.arange(count) % 2
    run = make_run(root, kind="inversion", components={"generator": ("dcgan", args, "generator")}, weights={"generator": dcgan(4, **args)},
                   ema={"generator": G}, tensors={"codes": codes},
                   inputs={"latent": {"dim": 8}, "codes": {"module": "codes", "count": count}},
                   output={"channels": 1, "image_size": [32, 32], "bit_depth": 16},
                   class_names=["healthy", "lesion"] if conditional else [])
    return run, G, codes
