"""The one place that reads run directories: checkpoint listing, the model file, training state.

Training (resume, prune, roll-back), generation (``load_generator``) and sharing (``export``) all go
through these functions, so the layout is defined once::

    <run>/config.yaml                         the fully resolved configuration
    <run>/model.json                          how to rebuild what the run generates (this module's ModelFile)
    <run>/generator.json                      the same for runs made before model.json (v1, kind 'noise')
    <run>/checkpoints/step_XXXXXXXX/
        <module>.safetensors                  every module the recipe trains (generator, discriminator, g_ab, ...)
        <module>_ema.safetensors              the EMA copy of the modules that have one
        training_state.pt                     optimisers, scalers, schedulers, RNG, counters, recipe state
        meta.json                             step, position, structure, module names; written last
    <run>/checkpoints/best.json               the best checkpoint by train.best_metric
    <run>/snapshots/epoch_XXXXXX.safetensors  EMA snapshots of the sampling component

Nothing here imports training, generation or sharing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG = "config.yaml"
RUN_RECORD = "run.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
MODEL_FILE = "model.json"
LEGACY_MODEL_FILE = "generator.json"
TRAINING_STATE = "training_state.pt"
META = "meta.json"
BEST = "best.json"
MODEL_FORMAT = "breastgan-model/2"
LEGACY_MODEL_FORMAT = "breastgan-generator/1"
CHECKPOINT_FORMAT = "breastgan-checkpoint/2"
CKPT_RE = re.compile(r"^step_(\d{8})$")
SNAPSHOT_RE = re.compile(r"^epoch_(\d{6})\.safetensors$")


class RunDirError(ValueError):
    """A run directory that cannot be read as asked; the message names the path and what is missing."""


# -- the model file -----------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(_Strict):
    """One network of a generative model: a registry key, its validated arguments, where its weights are."""

    arch: str = Field(description="generator-registry key (breastgan models)")
    args: dict[str, Any]
    module: str = Field(description="the checkpoint module holding its weights: <module>.safetensors / <module>_ema.safetensors")


class ModelFile(_Strict):
    """What a run generates and how to rebuild it without running code (kind: noise | translation | inversion)."""

    format: Literal["breastgan-model/2"] = MODEL_FORMAT
    kind: str = Field(description="a key of generation.kinds.KINDS")
    components: dict[str, ComponentSpec] = Field(description="role -> network; roles are defined by the kind")
    inputs: dict[str, Any] = Field(default_factory=dict, description="what the model consumes (latent spec, image spec, codes)")
    output: dict[str, Any] = Field(default_factory=dict, description="value_range, channels, image_size, bit_depth")
    class_names: list[str] = Field(default_factory=list)

    def sampling_component(self) -> ComponentSpec:
        return next(iter(self.components.values()))


def legacy_model_file(meta: dict[str, Any], where: str) -> ModelFile:
    """A v1 ``generator.json`` (noise-to-image DCGAN-style generator) read as kind 'noise'."""
    if meta.get("format") != LEGACY_MODEL_FORMAT:
        raise RunDirError(f"{where}: unsupported format {meta.get('format')!r}; expected {LEGACY_MODEL_FORMAT!r}")
    try:
        args = dict(meta["args"])
        return ModelFile(
            kind="noise",
            components={"generator": ComponentSpec(arch=meta["arch"], args=args, module="generator")},
            inputs={"latent": {"dim": int(args.get("latent_dim", 0)), "distribution": "standard_normal"}},
            output=dict(meta.get("output") or {}), class_names=list(meta.get("class_names") or []),
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise RunDirError(f"{where}: malformed v1 generator file ({exc})") from None


def read_model_file(run: str | Path) -> ModelFile:
    run = Path(run)
    f, legacy = run / MODEL_FILE, run / LEGACY_MODEL_FILE
    if f.is_file():
        try:
            return ModelFile.model_validate(json.loads(f.read_text()))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise RunDirError(f"{f}: not a valid breastgan model file ({exc})") from None
    if legacy.is_file():
        try:
            meta = json.loads(legacy.read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{legacy}: not valid JSON ({exc})") from None
        return legacy_model_file(meta, str(legacy))
    raise RunDirError(f"{run}: no {MODEL_FILE} (or {LEGACY_MODEL_FILE}); not a breastgan run directory")


def write_model_file(run: str | Path, model: ModelFile) -> None:
    from breastgan.utils.atomic import write_json_atomic

    write_json_atomic(Path(run) / MODEL_FILE, model.model_dump(mode="json"))


def config_path(run: str | Path) -> Path:
    """The run's fully resolved configuration (what ``--resume`` and export read)."""
    return Path(run) / CONFIG


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / MODEL_FILE).is_file() or (p / LEGACY_MODEL_FILE).is_file()


# -- checkpoints --------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    path: Path
    step: int
    meta: dict[str, Any]

    @property
    def modules(self) -> list[str]:
        """Modules stored in this checkpoint (v1 checkpoints: the fixed GAN trio)."""
        return list(self.meta.get("modules") or ["generator", "discriminator"])

    @property
    def ema_modules(self) -> list[str]:
        return list(self.meta.get("ema_modules") or (["generator"] if "modules" not in self.meta else []))

    @property
    def structure(self) -> dict[str, Any]:
        return dict(self.meta.get("structure") or {})

    def weights(self, module: str, ema: bool = False) -> Path:
        return self.path / (f"{module}_ema.safetensors" if ema else f"{module}.safetensors")


def checkpoints_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS


def list_checkpoints(run: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints (meta.json present: it is written last), oldest first."""
    d = checkpoints_dir(run)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        m = CKPT_RE.match(p.name)
        if m and (p / META).is_file():
            out.append(CheckpointInfo(p, int(m.group(1)), json.loads((p / META).read_text())))
    return out


def latest_checkpoint(run: str | Path) -> CheckpointInfo | None:
    items = list_checkpoints(run)
    return items[-1] if items else None


def best_step(run: str | Path) -> int | None:
    f = checkpoints_dir(run) / BEST
    return json.loads(f.read_text())["step"] if f.is_file() else None


def checkpoint_at(path: str | Path) -> CheckpointInfo | None:
    """The checkpoint a path names, when it is a checkpoint directory inside a run."""
    p = Path(path)
    m = CKPT_RE.match(p.name)
    if m and (p / META).is_file() and p.parent.name == CHECKPOINTS:
        return CheckpointInfo(p, int(m.group(1)), json.loads((p / META).read_text()))
    return None


def find_checkpoint(run: str | Path, which: str | int = "latest") -> CheckpointInfo:
    """'latest', 'best' or a step number; the error lists what exists."""
    run = Path(run)
    items = list_checkpoints(run)
    if not items:
        raise RunDirError(f"{run}: no checkpoints in {checkpoints_dir(run)}")
    if which == "latest":
        return items[-1]
    if which == "best":
        step = best_step(run)
        if step is None:
            raise RunDirError(f"{run}: no best checkpoint recorded (set train.eval and train.best_metric)")
        which = step
    for info in items:
        if info.step == int(which):
            return info
    raise RunDirError(f"{run}: no checkpoint for step {which}; available steps {[i.step for i in items]}")


def read_training_state(ckpt: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """training_state.pt with ``weights_only=True``: tensors and plain types, never arbitrary objects."""
    return torch.load(Path(ckpt) / TRAINING_STATE, map_location=map_location, weights_only=True)


def list_snapshots(run: str | Path) -> dict[int, Path]:
    d = Path(run) / SNAPSHOTS
    if not d.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(d.iterdir()) if (m := SNAPSHOT_RE.match(p.name))}


def read_dp_guarantee(ckpt: str | Path) -> dict[str, Any] | None:
    """The DP guarantee of a checkpoint (from its saved accountant), or None for a non-DP checkpoint."""
    from breastgan.utils.dp_accounting import guarantee_from_state

    state = read_training_state(ckpt)
    dp = state.get("dp") if "recipe" not in state else (state.get("recipe") or {}).get("dp")
    return guarantee_from_state(dp)


def checkpoint_model_file(info: CheckpointInfo, run: str | Path) -> ModelFile:
    """The model file describing *this* checkpoint's weights.

    Checkpoints record their own (``meta.json`` ``model``), because a recipe whose structure changes
    (a progressive GAN growing) rewrites the run's model.json for the newest structure, which older
    checkpoints do not have. Checkpoints without one (breastgan 0.1) are described by the run's file.
    """
    if info.meta.get("model"):
        try:
            return ModelFile.model_validate(info.meta["model"])
        except ValidationError as exc:
            raise RunDirError(f"{info.path / META}: field 'model' is not a valid model file ({exc})") from None
    return read_model_file(run)
