"""Load a trained model of any kind without running any code from the files it comes with.

Sources (see :mod:`breastgan.generation.source_loaders`): a run directory (``model.json``, or a v1
``generator.json`` read as kind 'noise', + a checkpoint's safetensors), one of its checkpoint
directories, a run's snapshot set (the model-sharing study's snapshot ensemble: image i comes from
snapshot i mod S), or anything a plug-in registers (``breastgan.sharing``: generator packages).

Run directories are read only through :mod:`breastgan.run_dir`. Each component's architecture is looked
up by key in breastgan's registry, its arguments validated and checked against the model file before
anything is built; each weights file is read as bytes and its safetensors header checked against the
built module before a tensor is materialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from breastgan.generation.kinds import (
    ComponentRequest,
    Declared,
    GeneratorLoadError,
    LoadedGenerator,
    LoadedModel,
    build_component,
    check_weights_size,
    codes_template,
    kind_class,
    plan_components,
)
from breastgan.generation.source_loaders import find_source_loader, register_source_loader
from breastgan.models.weights import load_state_dict_checked
from breastgan.run_dir import (
    CHECKPOINTS,
    CKPT_RE,
    LEGACY_MODEL_FILE,
    META,
    MODEL_FILE,
    SNAPSHOTS,
    CheckpointInfo,
    ModelFile,
    RunDirError,
    checkpoint_at,
    checkpoint_model_file,
    find_checkpoint,
    is_run_dir,
    list_snapshots,
    read_model_file,
)

__all__ = ["GeneratorLoadError", "LoadedGenerator", "load_generator", "load_run"]


def load_generator(
    source: str | Path,
    *,
    checkpoint: str | int = "latest",
    ema: bool = True,
    snapshots: str | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    only: str | None = None,
) -> LoadedModel:
    """Load a model from a run directory, a checkpoint directory or a generator package.

    Returns the run's or package's kind: :class:`LoadedGenerator` (noise), ``LoadedTranslator``
    (translation) or ``LoadedInversion`` (inversion). ``checkpoint``: 'latest', 'best' or a step number.
    ``ema``: use the EMA weights of the modules that have them (default). ``snapshots``: 'all' or a list
    of epochs to sample from the run's snapshot set instead (kind 'noise'). ``only``: the one source
    format accepted (``"run"``: run and checkpoint directories only; see :func:`source_kinds`), so a
    path that is something else is refused instead of being read by another loader.
    """
    src = Path(source)
    loader = find_source_loader(src)
    if only is not None:
        loader = _only(src, only, loader)
    if loader is None:
        if not src.exists():
            raise GeneratorLoadError(f"{src}: does not exist")
        raise GeneratorLoadError(f"{src}: not a breastgan run directory (no {MODEL_FILE} or {LEGACY_MODEL_FILE}), "
                                 "checkpoint directory or generator package")
    return loader.load(src, checkpoint=checkpoint, ema=ema, snapshots=snapshots, device=torch.device(device))


def _only(src: Path, only: str, found):
    from breastgan.generation.source_loaders import SOURCE_LOADERS

    if only not in SOURCE_LOADERS:
        raise GeneratorLoadError(f"only={only!r}: not a generator source format; available: {', '.join(SOURCE_LOADERS.names())}")
    wanted = SOURCE_LOADERS.entry(only)
    if found is wanted.obj:
        return found
    if not src.exists():
        raise GeneratorLoadError(f"{src}: does not exist")
    other = next((e for e in SOURCE_LOADERS if e.obj is found), None)
    what = f"it is {other.summary}" if other is not None else "it is neither"
    raise GeneratorLoadError(f"{src}: not {wanted.summary}; {what}")


def _looks_like_checkpoint(path: Path) -> bool:
    return bool(CKPT_RE.match(path.name)) and path.parent.name == CHECKPOINTS and (path / META).is_file()


def _accepts_run(path: Path) -> bool:
    return path.is_dir() and (is_run_dir(path) or _looks_like_checkpoint(path))


def _checkpoint_at(path: Path) -> CheckpointInfo | None:
    try:
        return checkpoint_at(path)
    except ValueError as exc:  # meta.json that is not JSON
        raise GeneratorLoadError(f"{path / META}: not a valid checkpoint record ({exc})") from None


def _declared(model: ModelFile, where: str) -> dict[str, Declared]:
    """What the model file says the components are, with the field saying it."""
    out: dict[str, Declared] = {}
    latent = model.inputs.get("latent")
    if isinstance(latent, dict) and latent.get("dim") is not None:
        out["latent_dim"] = Declared(latent["dim"], "inputs.latent.dim")
    image = model.inputs.get("image")
    if isinstance(image, dict):
        if image.get("channels") is not None:
            out["channels"] = Declared(image["channels"], "inputs.image.channels")
        if image.get("size_multiple") is not None:
            out["size_multiple"] = Declared(image["size_multiple"], "inputs.image.size_multiple")
    channels = model.output.get("channels")
    if channels is not None:
        if "channels" in out and out["channels"].value != channels:
            raise GeneratorLoadError(f"{where}: output.channels is {channels!r} but inputs.image.channels is {out['channels'].value!r}; "
                                     "a translator keeps the shape")
        out.setdefault("channels", Declared(channels, "output.channels"))
    if model.output.get("image_size") is not None:
        out["image_size"] = Declared(model.output["image_size"], "output.image_size")
    if model.class_names:
        out["num_classes"] = Declared(len(model.class_names), "class_names (count)")
    return out


def _weights_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise GeneratorLoadError(f"{path}: missing ({what})")
    return path.read_bytes()


def _snapshot_files(run: Path, snapshots: str | Sequence[int]) -> list[Path]:
    available = list_snapshots(run)
    if isinstance(snapshots, str):
        if snapshots != "all":
            raise GeneratorLoadError(f"snapshots: expected 'all' or a list of epochs, got {snapshots!r}")
        epochs = sorted(available)
    else:
        wanted = {int(e) for e in snapshots}
        missing = sorted(wanted - set(available))
        if missing:
            raise GeneratorLoadError(f"{run}: no snapshot for epoch(s) {missing}")
        epochs = sorted(wanted)
    if not epochs:
        raise GeneratorLoadError(f"{run}: no snapshots in {run / SNAPSHOTS} (set train.snapshot_every_epochs)")
    return [available[e] for e in epochs]


def _component_weights(ckpt: CheckpointInfo, module: str, ema: bool, where: str, role: str) -> Path:
    if module not in ckpt.modules:
        raise GeneratorLoadError(f"{ckpt.path}: the checkpoint holds the modules {ckpt.modules}, not {module!r} "
                                 f"(components.{role}.module in {where})")
    # modules trained without an EMA copy have one weight set, which is then what sampling uses
    return ckpt.weights(module, ema=ema and module in ckpt.ema_modules)


def load_run(
    path: str | Path,
    *,
    checkpoint: str | int = "latest",
    ema: bool = True,
    snapshots: str | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """A run directory, or one of its checkpoint directories (``checkpoint`` is then ignored).

    A checkpoint is described by the model file it recorded (``meta.json`` field ``model``), else by the
    run's ``model.json`` / ``generator.json``; a snapshot ensemble by the run's file.
    """
    src, device = Path(path), torch.device(device)
    info = _checkpoint_at(src)
    run = src.parent.parent if info is not None else src
    ckpt: CheckpointInfo | None = None
    try:
        if snapshots is None:
            # a checkpoint records the model file of its own weights (the run's file describes the newest structure)
            ckpt = info or find_checkpoint(run, checkpoint)
            model = checkpoint_model_file(ckpt, run)
        else:
            model = read_model_file(run)  # snapshots are of the run's sampling component
    except RunDirError as exc:
        raise GeneratorLoadError(str(exc)) from None
    if ckpt is not None and ckpt.meta.get("model"):
        where = f"{ckpt.path / META} (field 'model')"
    else:
        where = str(run / (MODEL_FILE if (run / MODEL_FILE).is_file() else LEGACY_MODEL_FILE))
    kind = kind_class(model.kind, where, "kind", GeneratorLoadError)
    kind.check_roles(list(model.components), where, "components", GeneratorLoadError)
    kind.check_inputs(list(model.inputs), where, "inputs", GeneratorLoadError)
    declared = _declared(model, where)
    requests = [ComponentRequest(role, spec.arch, spec.args, f"components.{role}.arch", f"components.{role}.args")
                for role, spec in model.components.items()]
    planned = plan_components(kind, requests, declared, where, GeneratorLoadError)  # before any module is built

    files: dict[str, list[Path]] = {}
    if snapshots is not None:
        if kind.ENSEMBLE_ROLE is None:
            raise GeneratorLoadError(f"{where}: snapshot ensembles are for kind 'noise'; this run's kind is {model.kind!r}")
        files[kind.ENSEMBLE_ROLE] = _snapshot_files(run, snapshots)
    elif ckpt is not None:
        for role, spec in model.components.items():
            files[role] = [_component_weights(ckpt, spec.module, ema, where, role)]

    sizes = {role: [(f.stat().st_size, str(f)) for f in paths if f.is_file()] for role, paths in files.items()}
    check_weights_size(planned, sizes, where, GeneratorLoadError)  # a few-kB file must not make us build gigabytes
    modules: dict[str, list[torch.nn.Module]] = {}
    for role, paths in files.items():
        mods = []
        for f in paths:
            module = build_component(kind, planned[role], declared, where, GeneratorLoadError)
            data = _weights_bytes(f, f"weights of component {role!r}")
            module.load_state_dict(load_state_dict_checked(data, module.state_dict(), str(f), GeneratorLoadError))
            mods.append(module.to(device).eval())
        modules[role] = mods
    sources = [str(f) for role in planned for f in files[role]]

    extras: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {
        "kind": model.kind, "model_file": where, "class_names": list(model.class_names),
        "output": dict(model.output), "inputs": dict(model.inputs),
        "components": {role: {"arch": spec.arch, "args": dict(spec.args)} for role, spec in model.components.items()},
    }
    if "generator" in model.components:
        meta["arch"], meta["args"] = model.components["generator"].arch, dict(model.components["generator"].args)
    codes = model.inputs.get("codes")
    if codes is not None and ckpt is not None:  # fitted codes live in the checkpoint (this kind has no snapshot ensembles)
        extras, codes_file = _read_codes(codes, ckpt, modules, where)
        meta["codes_source"] = str(codes_file)
        sources.append(str(codes_file))
    return kind.assemble(modules, extras, meta=meta, sources=sources, device=device, error=GeneratorLoadError)


def _read_codes(spec: Any, ckpt: CheckpointInfo, modules: dict[str, list[torch.nn.Module]], where: str):
    if not isinstance(spec, dict):
        raise GeneratorLoadError(f"{where}: inputs.codes must be an object {{module, count}}, got {spec!r}")
    module, count = spec.get("module", "codes"), spec.get("count")
    if not isinstance(module, str) or not module:
        raise GeneratorLoadError(f"{where}: inputs.codes.module must name a checkpoint module, got {module!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise GeneratorLoadError(f"{where}: inputs.codes.count must be a positive integer, got {count!r}")
    G = modules["generator"][0]
    f = ckpt.weights(module)
    data = _weights_bytes(f, f"fitted codes (inputs.codes.module {module!r} in {where})")
    return load_state_dict_checked(data, codes_template(count, G.latent_dim, bool(G.num_classes)), str(f), GeneratorLoadError), f


register_source_loader("run", _accepts_run, load_run,
                       summary="a breastgan run directory (model.json or generator.json + checkpoints) or one of its checkpoint directories")
