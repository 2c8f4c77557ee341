"""Checkpoints: weights as safetensors, training state loadable with ``torch.load(weights_only=True)``.

Layout of ``<run>/checkpoints/step_00001000/``::

    generator.safetensors       raw generator weights
    generator_ema.safetensors   EMA generator weights (what sampling uses)
    discriminator.safetensors
    training_state.pt           optimiser states, RNG states, counters (tensors and plain types only)
    meta.json                   step, epoch, position, metrics; written last

Each checkpoint directory is built under a temporary name, fsynced and renamed, so a crash never
leaves a checkpoint that looks complete but is not. A checkpoint with a non-finite weight is refused.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from breastgan.utils.atomic import atomic_dir, atomic_path, write_json_atomic

CKPT_RE = re.compile(r"^step_(\d{8})$")


class NonFiniteError(RuntimeError):
    """NaN or Inf in a loss or in weights."""


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def assert_finite(module: nn.Module, what: str) -> None:
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteError(f"{what}: tensor {name!r} holds NaN/Inf; refusing to save it")


def save_weights(path: Path, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(state_dict_cpu(module), str(tmp), metadata=metadata)


def load_weights(path: Path, module: nn.Module, strict: bool = True) -> None:
    tensors = load_file(str(path))
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    meta: dict[str, Any]


class CheckpointManager:
    def __init__(self, run_dir: Path, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(
        self,
        step: int,
        generator: nn.Module,
        generator_ema: nn.Module,
        discriminator: nn.Module,
        training_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        for module, what in ((generator, "generator"), (generator_ema, "EMA generator"), (discriminator, "discriminator")):
            assert_finite(module, f"checkpoint at step {step}: {what}")
        dest = self.dir / f"step_{step:08d}"
        with atomic_dir(dest) as tmp:
            save_file(state_dict_cpu(generator), str(tmp / "generator.safetensors"))
            save_file(state_dict_cpu(generator_ema), str(tmp / "generator_ema.safetensors"))
            save_file(state_dict_cpu(discriminator), str(tmp / "discriminator.safetensors"))
            torch.save(training_state, tmp / "training_state.pt")
            (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2, sort_keys=True, default=float))
        self.prune()
        return dest

    def list(self) -> list[CheckpointInfo]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.iterdir()):
            m = CKPT_RE.match(p.name)
            if m and (p / "meta.json").is_file():
                out.append(CheckpointInfo(p, int(m.group(1)), json.loads((p / "meta.json").read_text())))
        return out

    def latest(self) -> CheckpointInfo | None:
        items = self.list()
        return items[-1] if items else None

    def best_step(self) -> int | None:
        f = self.dir / "best.json"
        return json.loads(f.read_text())["step"] if f.is_file() else None

    def mark_best(self, step: int, metric: str, value: float) -> None:
        write_json_atomic(self.dir / "best.json", {"step": step, "metric": metric, "value": value})

    def prune(self) -> None:
        items = self.list()
        best = self.best_step()
        for info in items[: max(0, len(items) - self.keep_last)]:
            if info.step != best:
                shutil.rmtree(info.path, ignore_errors=True)
        # leftovers of a crash during save (temporary directories) are not checkpoints: clean them
        for p in self.dir.glob(".step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def load_training_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path / "training_state.pt", map_location=map_location, weights_only=True)
