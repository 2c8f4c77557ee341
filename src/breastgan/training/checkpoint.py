"""Checkpoints of named modules: weights as safetensors, training state loadable with ``weights_only=True``.

Layout of ``<run>/checkpoints/step_00001000/`` (see breastgan.run_dir)::

    <module>.safetensors        every module the recipe trains (generator, discriminator, g_ab, ...)
    <module>_ema.safetensors    the EMA copy of the modules that have one (what sampling uses)
    training_state.pt           optimiser, scaler and scheduler states, RNG states, counters, recipe state
    meta.json                   step, position, structure, module names; written last

Each checkpoint directory is built under a temporary name, fsynced and renamed, so a crash never
leaves a checkpoint that looks complete but is not. A checkpoint with a non-finite weight is refused.
Only rank 0 calls :meth:`CheckpointManager.save`; other ranks receive what rank 0 reads
(:func:`read_checkpoint`) by broadcast, so no rank but 0 needs to see the run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from breastgan.models.weights import state_dict_cpu
from breastgan.run_dir import BEST, CHECKPOINT_FORMAT, META, TRAINING_STATE, CheckpointInfo, best_step, checkpoints_dir, list_checkpoints, read_training_state
from breastgan.utils.atomic import atomic_dir, atomic_path, write_json_atomic


class NonFiniteError(RuntimeError):
    """NaN or Inf in a loss or in weights."""


def assert_finite(state: dict[str, torch.Tensor], what: str) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteError(f"{what}: tensor {name!r} holds NaN/Inf; refusing to save it")


def save_weights(path: Path, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(state_dict_cpu(module), str(tmp), metadata=metadata)


class CheckpointManager:
    """Writes, lists and prunes a run's checkpoints (rank 0 only)."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.run_dir = Path(run_dir)
        self.dir = checkpoints_dir(run_dir)
        self.keep_last = keep_last

    def save(self, step: int, modules: dict[str, nn.Module], ema: dict[str, nn.Module], training_state: dict[str, Any],
             meta: dict[str, Any]) -> Path:
        weights = {name: state_dict_cpu(m) for name, m in modules.items()}
        weights.update({f"{name}_ema": state_dict_cpu(m) for name, m in ema.items()})
        for name, state in weights.items():
            assert_finite(state, f"checkpoint at step {step}: {name}")
        dest = self.dir / f"step_{step:08d}"
        with atomic_dir(dest) as tmp:
            for name, state in weights.items():
                save_file(state, str(tmp / f"{name}.safetensors"))
            torch.save(training_state, tmp / TRAINING_STATE)
            record = {"format": CHECKPOINT_FORMAT, "step": step, "modules": list(modules), "ema_modules": list(ema), **meta}
            (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True, default=float))
        self.prune()
        return dest

    def list(self) -> list[CheckpointInfo]:
        return list_checkpoints(self.run_dir)

    def latest(self) -> CheckpointInfo | None:
        items = self.list()
        return items[-1] if items else None

    def best_step(self) -> int | None:
        return best_step(self.run_dir)

    def mark_best(self, step: int, metric: str, value: float) -> None:
        write_json_atomic(self.dir / BEST, {"step": step, "metric": metric, "value": value})

    def prune(self) -> None:
        items = self.list()
        best = self.best_step()
        for info in items[: max(0, len(items) - self.keep_last)]:
            if info.step != best:
                shutil.rmtree(info.path, ignore_errors=True)
        # leftovers of a crash during save (temporary directories) are not checkpoints: clean them
        for p in self.dir.glob(".step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def read_checkpoint(info: CheckpointInfo) -> dict[str, Any]:
    """Everything needed to restore a checkpoint, as plain tensors (what rank 0 broadcasts to the others).

    v1 checkpoints (breastgan 0.1: fixed generator / discriminator trio, ``opt_g`` / ``opt_d`` keys)
    are translated to the named form, so old runs resume.
    """
    path = info.path
    state = read_training_state(path)
    modules = info.modules
    weights = {name: load_file(str(info.weights(name))) for name in modules}
    ema = {name: load_file(str(info.weights(name, ema=True))) for name in info.ema_modules}
    if "recipe" not in state:  # v1 layout
        state = {
            "optimizers": {"generator": state["opt_g"], "discriminator": state["opt_d"]},
            "scalers": {"generator": state["scaler_g"], "discriminator": state["scaler_d"]},
            "schedulers": {},
            "rng": state["rng"], "torch_rng": state["torch_rng"],
            "loop": {"step": state["step"], "iteration": state["d_iters"], "rollbacks": state["rollbacks"],
                     "streams": {"real": {"epoch": state["epoch"], "batch_in_epoch": state["batch_in_epoch"]}}},
            "recipe": {"last_labels_global": state["last_labels_global"], **({"dp": state["dp"]} if "dp" in state else {})},
        }
    return {"path": str(path), "step": info.step, "meta": info.meta, "weights": weights, "ema": ema, "state": state}
