"""Export a trained run as a generator package (schema v2, any kind): privacy audit first, then an atomic write.

What goes in: the EMA weights of every component the run's kind generates with (``<role>.safetensors``;
an inversion's fitted codes in ``codes.safetensors``), the manifest (schema in
:mod:`breastgan.sharing.manifest`), reference samples for fixed seeds (a translator's: its translations
of synthetic inputs made from each seed), a model card, and optionally an ONNX graph (kind 'noise') and
medigan-style metadata. What never goes in: the discriminator, optimiser or RNG state, real images,
file paths, dataset folder names, patient or image identifiers.

The package is assembled in a temporary directory next to ``out`` and renamed into place only when
complete, so a crash or a failed audit leaves no half-written package.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from breastgan import __version__
from breastgan.generation.kinds import LoadedGenerator, LoadedInversion, LoadedModel, LoadedTranslator
from breastgan.generation.latents import SYNTHETIC_INPUTS
from breastgan.models.weights import state_dict_cpu
from breastgan.sharing.audit import (
    AuditConfig,
    PrivacyGateError,
    audit_subject,
    failed_checks_message,
    load_image_set,
    run_audit,
    run_training_images,
)
from breastgan.sharing.loader import check_package_files, sample_digest
from breastgan.sharing.manifest import (
    CODES_NAME,
    FORMAT,
    MANIFEST_NAME,
    MEDIGAN_NAME,
    MODEL_CARD_NAME,
    ONNX_NAME,
    REFERENCE_NAME,
    SCHEMA_VERSION,
    Manifest,
    PackageError,
    manifest_bytes,
)
from breastgan.utils.atomic import atomic_dir

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TOLERANCE = 2e-3


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    manifest_sha256: str
    audit: dict[str, Any] | None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safe_scalar(v: Any) -> bool:
    # options copied into the manifest must not smuggle paths or identifiers
    if isinstance(v, bool) or isinstance(v, (int, float)) or v is None:
        return True
    return isinstance(v, str) and len(v) <= 40 and "/" not in v and "\\" not in v


def _describe_options(prefix: str, options: dict[str, Any]) -> str:
    parts = []
    for k, v in sorted(options.items()):
        if isinstance(v, dict):
            inner = {a: b for a, b in v.items() if _safe_scalar(b)}
            if inner:
                parts.append(f"{k}=({', '.join(f'{a}={b}' for a, b in sorted(inner.items()))})")
        elif isinstance(v, (list, tuple)) and all(_safe_scalar(x) for x in v) and len(v) <= 8:
            parts.append(f"{k}={list(v)}")
        elif _safe_scalar(v):
            parts.append(f"{k}={v}")
    return f"{prefix}: {', '.join(parts)}"[:200]


def _preprocessing(cfg: Any, dataset: Any) -> dict[str, Any]:
    import yaml

    kind = cfg.data.source.component
    steps = []
    prepared_cfg = Path(str(cfg.data.source.args.get("path", ""))) / "config.yaml" if kind == "prepared" else None
    if prepared_cfg is not None and prepared_cfg.is_file():
        pc = yaml.safe_load(prepared_cfg.read_text()) or {}
        steps.append(f"breastgan prepare: adapter {pc.get('dataset', {}).get('adapter', '?')}, task {pc.get('task', {}).get('name', '?')}")
        steps.append(_describe_options("task options", pc.get("task", {}).get("args", {})))
    else:
        steps.append(_describe_options(f"dataset {kind}", {k: v for k, v in cfg.data.source.args.items() if k != "path"}))
    steps.append("pixel values scaled to [0, 1] (float32), generator trained on [-1, 1]")
    flips = [name for name, on in (("horizontal", cfg.data.hflip), ("vertical", cfg.data.vflip)) if on]
    return {"steps": steps, "flips_in_training": flips}


def _training_summary(cfg: Any, dataset: Any) -> dict[str, Any]:
    labels = getattr(dataset, "labels", None)
    names = list(dataset.info.class_names)
    per_class: dict[str, int] = {}
    if isinstance(labels, torch.Tensor) and len(names) > 1:
        counts = torch.bincount(labels.long(), minlength=len(names))
        per_class = {names[i]: int(c) for i, c in enumerate(counts.tolist())}
    rows = getattr(dataset, "rows", None)
    patients = None
    if rows and "patient_id" in rows[0]:
        patients = len({r["patient_id"] for r in rows})
    return {"dataset_kind": cfg.data.source.component, "n_images": len(dataset), "n_per_class": per_class,
            "n_patients": patients, "image_size": list(dataset.info.image_size)}


def _metrics(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    out = {}
    for name, m in (data.get("metrics", data)).items():
        out[name.lower()] = {"value": m.get("value"), "ci95": m.get("ci95"),
                             "n": {k: int(v) for k, v in (m.get("n") or {}).items()}}
    return out


def _audit_record(report: dict[str, Any] | None, forced: bool, reason: str | None) -> dict[str, Any]:
    if report is None:
        return {"status": "skipped", "forced": True, "override_reason": reason}
    return {
        "status": "passed" if report["passed"] else "failed", "forced": forced and not report["passed"],
        "override_reason": reason if forced and not report["passed"] else None,
        "checks": [{k: c[k] for k in ("name", "value", "threshold", "rule", "passed", "ci95")} for c in report["checks"]],
        "thresholds": {k: float(v) for k, v in report["thresholds"].items()},
        "results": report["results"], "n": report["n"],
    }


def _usage(m: Manifest) -> list[str]:
    if m.kind == "translation":
        d = m.inputs.image.directions[0]
        return [f"x = ...  # (N, {m.inputs.image.channels}, H, W) float32 in [0, 1], sides multiples of {m.inputs.image.size_multiple}",
                f"y = gen.translate(x, {d!r})  # same shape, float32 in [0, 1]; directions: {', '.join(m.inputs.image.directions)}"]
    if m.kind == "inversion":
        return ["images = gen.reconstruct([0, 1, 2])  # renderings of the stored codes, (3, C, H, W) float32 in [0, 1]"]
    return ["images = gen.sample(16, seed=0)  # (16, C, H, W) float32 in [0, 1]"]


def _model_lines(m: Manifest) -> list[str]:
    lines = [f"- kind: {m.kind}"]
    for role, c in m.components.items():
        lines.append(f"- {role}: architecture `{c.architecture.key}` from breastgan's registry; arguments: "
                     f"`{json.dumps(dict(c.architecture.args), sort_keys=True)}`; weights `{c.weights}`")
    if m.inputs.latent is not None:
        lines.append(f"- latent: {m.inputs.latent.dim}-d standard normal ({m.inputs.latent.sampler})")
    if m.inputs.image is not None:
        img = m.inputs.image
        lines.append(f"- input: {img.channels}-channel images in [0, 1], sides multiples of {img.size_multiple}; "
                     f"directions: {', '.join(img.directions)}")
    if m.inputs.codes is not None:
        lines.append(f"- codes: {m.inputs.codes.count} latent codes fitted to images (`{m.inputs.codes.file}`); "
                     "they render reconstructions of the images they were fitted to")
    size = f"{m.output.height} x {m.output.width}" + (" (reference size; any multiple of the size multiple)" if m.kind == "translation" else "")
    lines += [f"- output: {m.output.channels} x {size}, float32 in {list(m.output.value_range)}, training images {m.output.bit_depth}-bit",
              f"- labels: {', '.join(m.labels.class_names) if m.labels.conditional else 'unconditional'}",
              f"- modality: {m.modality}; licence: {m.licence}"]
    return lines


def _model_card(m: Manifest) -> str:
    audit = m.privacy_audit
    lines = [
        f"# {m.name}", "", m.description or "A breastgan generator package.", "",
        "## Use", "", "```python", "import breastgan", f"gen = breastgan.load_generator('path/to/{m.name}')  # verifies hashes, no code is run",
        *_usage(m), "```", "",
        "Or: `breastgan verify <pkg>` then `breastgan generate --package <pkg> --out out/`"
        + (" --input <folder of images>" if m.kind == "translation" else "") + ".", "",
        "## Model", "", *_model_lines(m), "",
        "## Training data (counts only)", "",
        f"- dataset kind: {m.training_data.dataset_kind}; images: {m.training_data.n_images}; "
        f"patients: {m.training_data.n_patients if m.training_data.n_patients is not None else 'not recorded'}",
        f"- per class: {m.training_data.n_per_class or '-'}",
        *[f"- {s}" for s in m.preprocessing.steps], "",
        "## Privacy", "",
        f"- audit: **{audit.status}**" + (f" (exported by override: {audit.override_reason})" if audit.forced else ""),
        *[f"  - {c.name} = {c.value if c.value is None else round(c.value, 4)} (must be {c.rule} {c.threshold}): "
          f"{'ok' if c.passed else 'FAILED'}" for c in audit.checks],
    ]
    dp = m.differential_privacy
    lines.append(f"- differential privacy: (epsilon={dp.epsilon:.3g}, delta={dp.delta:.2g}) per {dp.unit}, {dp.scope}"
                 if dp else "- differential privacy: none (no formal guarantee)")
    if m.metrics:
        lines += ["", "## Metrics", ""]
        lines += [f"- {k}: {v.value}" + (f" (95% CI {list(v.ci95)})" if v.ci95 else "") + (f", n={dict(v.n)}" if v.n else "")
                  for k, v in sorted(m.metrics.items())]
    inputs = " (inputs: synthetic images made from each seed, never real images)" if m.reference_samples.input_images else ""
    lines += ["", "## Verification", "",
              f"Reference samples for seeds {m.reference_samples.seeds} ({m.reference_samples.n_per_seed} each){inputs} were produced on "
              f"{m.reference_samples.device}; `breastgan verify` reproduces them bit-exactly on the same build and within "
              f"{m.reference_samples.tolerance:g} elsewhere.", "",
              f"breastgan {m.versions.breastgan}, torch {m.versions.torch}. Package format {FORMAT} v{m.schema_version}.", ""]
    return "\n".join(lines)


def _medigan_metadata(m: Manifest) -> dict[str, Any]:
    """medigan's config entry shape (execution / selection / description), pointing at breastgan's safe loader."""
    keys = sorted({c.architecture.key for c in m.components.values()})
    if m.kind == "translation":
        method = {"name": "breastgan.load_generator(...).translate", "args": {"base": ["images", "direction"],
                  "custom": {"direction": list(m.inputs.image.directions)}}}
        inputs, function = ["images", "direction"], ["translation"]
    elif m.kind == "inversion":
        method = {"name": "breastgan.load_generator(...).reconstruct", "args": {"base": ["indices"], "custom": {}}}
        inputs, function = ["indices"], ["reconstruction"]
    else:
        method = {"name": "breastgan.load_generator(...).sample", "args": {"base": ["n", "seed"], "custom": {"labels": m.labels.class_names}}}
        inputs, function = ["n", "seed"], ["generation"]
    return {m.name: {
        "execution": {
            "package_name": "breastgan", "package_link": None, "model_name": m.name, "extension": ".safetensors",
            "image_size": [m.output.height, m.output.width], "dependencies": ["breastgan"], "generate_method": method,
            "note": "no code is distributed with this model; breastgan loads the safetensors weights after hash checks",
        },
        "selection": {
            "performance": {k: v.value for k, v in m.metrics.items()}, "use_cases": [], "organ": ["breast"], "modality": [m.modality],
            "vendors": [], "centres": [], "function": function, "condition": m.labels.class_names,
            "dataset": [m.training_data.dataset_kind], "augmentations": list(m.preprocessing.flips_in_training),
            "generates": ["images"], "height": m.output.height, "width": m.output.width, "depth": None, "type": ",".join(keys),
            "license": m.licence, "dataset_type": "public" if m.training_data.dataset_kind == "phantom" else "unspecified",
            "privacy_preservation": "differential privacy" if m.differential_privacy else ("privacy audit" if m.privacy_audit.status == "passed" else None),
            "tags": ["breastgan", m.modality, m.kind],
        },
        "description": {"title": m.name, "provided_date": m.created, "trained_date": None, "provided_after_epoch": None,
                        "version": m.versions.breastgan, "publication": None, "doi": [], "inputs": inputs, "comment": m.description},
    }}


ONNX_EXPORTERS: dict[str, Callable[[torch.nn.Module, Path, int, int], None]] = {}


def _onnx_exporter(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        ONNX_EXPORTERS[name] = fn
        return fn
    return deco


class _OnnxWrapper(torch.nn.Module):
    """z (and labels) -> images in [0, 1]: the same mapping breastgan's sample() applies."""

    def __init__(self, G: torch.nn.Module):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return (self.G(z, labels).clamp(-1, 1) + 1) / 2


def _onnx_inputs(G: torch.nn.Module) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    z = torch.zeros(2, G.latent_dim)
    if getattr(G, "num_classes", 0):
        return (z, torch.zeros(2, dtype=torch.long)), ["z", "labels"]
    return (z,), ["z"]


@_onnx_exporter("dynamo")
def _export_dynamo(G: torch.nn.Module, path: Path, opset: int, _: int) -> None:
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise PackageError("ONNX export with torch's default (dynamo) exporter needs the package 'onnxscript' "
                           "(pip install onnxscript), or use onnx_exporter='torchscript'")
    args, names = _onnx_inputs(G)
    batch = torch.export.Dim("batch")
    torch.onnx.export(_OnnxWrapper(G), args, str(path), input_names=names, output_names=["images"], opset_version=opset,
                      dynamo=True, dynamic_shapes=tuple({0: batch} for _ in args))


@_onnx_exporter("torchscript")
def _export_torchscript(G: torch.nn.Module, path: Path, opset: int, _: int) -> None:
    import warnings

    args, names = _onnx_inputs(G)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
        torch.onnx.export(_OnnxWrapper(G), args, str(path), input_names=names, output_names=["images"], opset_version=opset,
                          dynamo=False, dynamic_axes={n: {0: "batch"} for n in [*names, "images"]})


def export_onnx(G: torch.nn.Module, path: Path, exporter: str = "torchscript", opset: int = 17) -> None:
    if exporter not in ONNX_EXPORTERS:
        raise PackageError(f"unknown ONNX exporter {exporter!r}; available: {sorted(ONNX_EXPORTERS)}")
    try:
        import onnx
    except ImportError:
        raise PackageError("ONNX export needs the package 'onnx' (pip install 'breastgan[sharing]')") from None
    ONNX_EXPORTERS[exporter](G.cpu().eval(), path, opset, 0)
    onnx.checker.check_model(onnx.load(str(path)))


def _full_args(arch: str, args: dict[str, Any], where: str) -> dict[str, Any]:
    """Every argument spelled out (the recipient's defaults may differ from the exporter's)."""
    from breastgan.models.registry import GENERATORS

    return GENERATORS.entry(arch).validate_args(dict(args), where).model_dump(mode="json")


def _kind_fields(gen: LoadedModel, model_file: Any, dataset: Any, n_per_seed: int) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], int]:
    """Manifest fields that depend on the kind, the tensor files to write (name -> tensors) and the reference count per seed."""
    components = {role: {"architecture": {"key": spec.arch, "args": _full_args(spec.arch, spec.args, f"components.{role}.args")},
                         "weights": f"{role}.safetensors"} for role, spec in model_file.components.items()}
    tensors = {f"{role}.safetensors": state_dict_cpu(mods[0]) for role, mods in gen.modules.items()}
    bit_depth = int(model_file.output.get("bit_depth", 16))
    if isinstance(gen, LoadedTranslator):
        h, w = (model_file.output.get("image_size") or list(dataset.info.image_size))[:2]
        m = gen.size_multiple
        if h % m or w % m:
            raise PackageError(f"the run's image size {h}x{w} is not a multiple of the translator's size multiple {m}; "
                               "the reference samples need a size the translator accepts")
        fields = {"inputs": {"image": {"channels": gen.channels, "size_multiple": m, "directions": gen.directions}},
                  "labels": {"conditional": False, "class_names": []},
                  "output": {"channels": gen.channels, "height": int(h), "width": int(w), "bit_depth": bit_depth}}
        return {"components": components, **fields}, tensors, n_per_seed
    if not isinstance(gen, (LoadedGenerator, LoadedInversion)):
        raise PackageError(f"export: kind {gen.kind!r} has no package layout in this breastgan")
    G = gen.generator if isinstance(gen, LoadedInversion) else gen.models[0]
    conditional = bool(G.num_classes)
    fields = {"inputs": {"latent": {"dim": G.latent_dim}},
              "labels": {"conditional": conditional, "class_names": list(model_file.class_names) if conditional else []},
              "output": {"channels": G.channels, "height": G.image_size[0], "width": G.image_size[1], "bit_depth": bit_depth}}
    if isinstance(gen, LoadedInversion):
        fields["inputs"]["codes"] = {"count": gen.count, "file": CODES_NAME, "labels": conditional}
        tensors[CODES_NAME] = gen.code_tensors()
        n_per_seed = min(n_per_seed, gen.count)
    return {"components": components, **fields}, tensors, n_per_seed


def refuse_individual_fits(gen: LoadedModel, where: Any) -> None:
    """A component that keeps tensors fitted to individual training images (dm-GAN's 'interpolate' rule keeps
    every patient's code set) would ship those images' reconstructions: no audit threshold makes that safe."""
    for role, mods in gen.modules.items():
        for m in mods:
            fits = list(getattr(m, "individual_fits", []) or [])
            if fits:
                raise PackageError(f"{where}: component {role!r} holds {fits}, tensors fitted to individual training images "
                                   f"(a reconstruction of each patient's image); export refuses them. Retrain with a sampling rule "
                                   f"that keeps only aggregate statistics (dm-GAN: recipe.sampling alpha_gaussian), which the privacy "
                                   f"audit then checks like any trained weight")


def export_package(
    run: str | Path,
    out: str | Path,
    *,
    holdout: Any = None,
    train: Any = None,
    canaries: Any = None,
    audit: AuditConfig | dict[str, Any] | None = None,
    force: bool = False,
    override_reason: str | None = None,
    checkpoint: str | int = "latest",
    name: str | None = None,
    description: str = "",
    licence: str = "unspecified (ask the publisher)",
    modality: str = "mammography",
    metrics: str | Path | dict[str, Any] | None = None,
    reference_seeds: tuple[int, ...] = DEFAULT_SEEDS,
    n_per_seed: int = 4,
    tolerance: float = DEFAULT_TOLERANCE,
    onnx: bool = False,
    onnx_exporter: str = "torchscript",
    medigan: bool = False,
    overwrite: bool = False,
    train_split: str | None = "train",
    holdout_split: str | None = "test",
) -> ExportResult:
    """Audit the run's model (EMA weights), then write the package to ``out`` atomically.

    Any kind the run's model file names (noise, translation, inversion) is exported as schema v2.
    ``holdout``: held-out real images (prepared set, folder, tensor or dataset) for the audit; a
    translator is audited on its translations of the held-out images. ``train``: the training images
    (default: rebuilt from the run's config). A failed audit raises :class:`PrivacyGateError` unless
    ``force`` is set, which requires ``override_reason`` (recorded in the manifest and model card).
    ``force`` without ``holdout`` skips the audit (recorded too).
    """
    from breastgan.config import load_config
    from breastgan.generation.loader import load_generator
    from breastgan.run_dir import checkpoint_model_file, find_checkpoint, read_dp_guarantee

    run, out = Path(run), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds files; choose another --out or pass overwrite")
    if force and not override_reason:
        raise ValueError("force: give override_reason (it is recorded in the manifest and the model card)")
    if onnx and onnx_exporter not in ONNX_EXPORTERS:
        raise PackageError(f"unknown ONNX exporter {onnx_exporter!r}; available: {sorted(ONNX_EXPORTERS)}")
    cfg = load_config(run / "config.yaml")
    ckpt = find_checkpoint(run, checkpoint)
    model_file = checkpoint_model_file(ckpt, run)  # what this checkpoint's weights are
    gen = load_generator(ckpt.path, ema=True)
    refuse_individual_fits(gen, ckpt.path)
    if onnx and gen.kind != "noise":
        raise PackageError(f"ONNX export maps latents to images (kind 'noise'); this run's kind is {gen.kind!r}")
    dataset = run_training_images(run) if train is None else None

    # 1. the privacy gate, before anything is written
    report = None
    if holdout is not None:
        train_images = load_image_set(train if train is not None else dataset, train_split)
        holdout_images = load_image_set(holdout, holdout_split)
        report = run_audit(audit_subject(gen, holdout_images), train_images, holdout_images, audit,
                           load_image_set(canaries, None) if canaries is not None else None)
        if not report["passed"] and not force:
            raise PrivacyGateError(failed_checks_message(report) + "\nno package was written; pass force with a reason to override")
    elif not force:
        raise PrivacyGateError("export runs the privacy audit first: give held-out real images (holdout), "
                               "or force with an override_reason to export unaudited (recorded in the manifest)")

    # 2. the manifest fields
    dataset = dataset if dataset is not None else run_training_images(run)
    kind_fields, tensor_files, n_ref = _kind_fields(gen, model_file, dataset, n_per_seed)
    out_size = (kind_fields["output"]["height"], kind_fields["output"]["width"])
    refs = gen.reference_images(reference_seeds, n_ref, out_size)
    manifest_fields: dict[str, Any] = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": gen.kind,
        "name": (name or cfg.name).lower().replace(".", "-"), "description": description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "licence": licence, "modality": modality,
        **kind_fields,
        "preprocessing": _preprocessing(cfg, dataset),
        "training_data": _training_summary(cfg, dataset),
        "metrics": _metrics(metrics),
        "privacy_audit": _audit_record(report, force, override_reason),
        "differential_privacy": read_dp_guarantee(ckpt.path),
        "versions": {"breastgan": __version__, "torch": torch.__version__, "safetensors": _version("safetensors"),
                     "python": platform.python_version()},
        "reference_samples": {"seeds": list(reference_seeds), "n_per_seed": n_ref,
                              "sha256": {k: sample_digest(x) for k, x in refs.items()}, "tolerance": tolerance,
                              "device": f"{gen.device.type} ({platform.machine()}, torch {torch.__version__})",
                              "input_images": SYNTHETIC_INPUTS if gen.kind == "translation" else None},
    }

    # 3. files, assembled in a temporary directory and renamed into place
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        roles = {}
        for fname, tensors in tensor_files.items():
            save_file(tensors, str(tmp / fname))
            roles[fname] = "codes" if fname == CODES_NAME else "weights"
        save_file({k: x.contiguous() for k, x in refs.items()}, str(tmp / REFERENCE_NAME))
        roles.update({REFERENCE_NAME: "reference_samples", MODEL_CARD_NAME: "model_card"})
        if onnx:
            export_onnx(gen.models[0], tmp / ONNX_NAME, onnx_exporter)
            roles[ONNX_NAME] = "onnx"
        if medigan:
            roles[MEDIGAN_NAME] = "medigan_metadata"
        # the model card and medigan metadata describe the manifest, which lists their hashes: build
        # the manifest with placeholders first, write them, then hash everything
        draft = Manifest.model_validate({**manifest_fields, "files": {n: {"role": r, "sha256": "0" * 64, "size": 0} for n, r in roles.items()}})
        (tmp / MODEL_CARD_NAME).write_text(_model_card(draft), encoding="utf-8")
        if medigan:
            (tmp / MEDIGAN_NAME).write_text(json.dumps(_medigan_metadata(draft), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files = {n: {"role": r, "sha256": _sha256(tmp / n), "size": (tmp / n).stat().st_size} for n, r in roles.items()}
        manifest = Manifest.model_validate({**manifest_fields, "files": files})
        raw = manifest_bytes(manifest)
        (tmp / MANIFEST_NAME).write_bytes(raw)
        check_package_files(tmp)  # the package must pass the recipient's own checks before it exists
    return ExportResult(out, manifest, hashlib.sha256(raw).hexdigest(), report)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
