"""Load and verify generator packages without executing anything that comes with them.

The order is the one trust.md prescribes, and it matters: nothing from a file is parsed before
its bytes are known to be the ones the manifest lists.

1. ``manifest.json`` is read as bytes (size-capped); only its file list is decoded, with a strict
   model; every listed file's size and sha256 are checked and any other entry in the directory
   (an extra file, a sub-directory, a symlink) is refused.
2. The manifest is parsed with the strict, versioned schema (unknown keys are errors; v1 and v2).
3. Every component's architecture key is resolved in breastgan's registry and its arguments
   validated by that architecture's own argument model; they must agree with the manifest's
   latent/image/output/label spec, and the model they describe is counted on the meta device: at
   most ``kinds.MAX_PARAMETERS`` parameters + buffers, and no more bytes than its listed weights file
   holds. All of this is checked from the arguments before any module is built
   (:func:`breastgan.generation.kinds.plan_components`, :func:`~breastgan.generation.kinds.check_weights_size`).
4. Each component's safetensors header is read and checked (names, dtypes, shapes) against the
   instantiated module before any tensor is materialised; values must be finite. An inversion's
   codes file is checked the same way against the shapes the manifest declares.
5. ``verify_package`` also regenerates the reference samples for the manifest's seeds.

Files whose bytes were hashed are parsed from those same in-memory bytes, so a file swapped on disk
between the check and the load is never read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from breastgan.generation.kinds import (
    ComponentRequest,
    Declared,
    LoadedModel,
    build_component,
    check_weights_size,
    codes_template,
    kind_class,
    plan_components,
)
from breastgan.models.weights import load_state_dict_checked
from breastgan.sharing.manifest import (
    MANIFEST_NAME,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    AnyManifest,
    FilesOnly,
    ManifestV1,
    PackageError,
    parse_json_bytes,
    parse_manifest,
    validation_message,
)

# files parsed after the hash check are kept in memory (small for the models breastgan trains)
PARSED_ROLES = ("weights", "codes", "reference_samples")


@dataclass
class CheckedPackage:
    path: Path
    manifest: AnyManifest
    manifest_sha256: str
    contents: dict[str, bytes]  # file name -> bytes, for the files that are parsed later (PARSED_ROLES)


def _regular_file(path: Path, what: str) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PackageError(f"{path}: {what} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise PackageError(f"{path}: {what} is a symbolic link; packages hold regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise PackageError(f"{path}: {what} is not a regular file")
    return st


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    st = _regular_file(path, what)
    if st.st_size > limit:
        raise PackageError(f"{path}: {what} is {st.st_size} bytes, over the {limit}-byte limit")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{path}: {what} grew past the {limit}-byte limit while being read")
    return data


def _hash_file(path: Path, size: int, keep: bool) -> tuple[str, bytes | None]:
    h = hashlib.sha256()
    kept = bytearray() if keep else None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        remaining = size
        while remaining > 0:
            block = fh.read(min(1 << 20, remaining))
            if not block:
                break
            h.update(block)
            if kept is not None:
                kept += block
            remaining -= len(block)
        if fh.read(1):
            raise PackageError(f"{path}: longer than the {size} bytes listed in {MANIFEST_NAME}")
    return h.hexdigest(), (bytes(kept) if kept is not None else None)


def check_package_files(path: str | Path, expected_manifest_sha256: str | None = None) -> CheckedPackage:
    """Steps 1 and 2: hashes of every listed file, no unlisted entries, then the strict schema."""
    pkg = Path(path)
    if not pkg.is_dir():
        raise PackageError(f"{pkg}: not a directory; a generator package is a folder with {MANIFEST_NAME}")
    raw = _read_capped(pkg / MANIFEST_NAME, MAX_MANIFEST_BYTES, MANIFEST_NAME)
    manifest_sha = hashlib.sha256(raw).hexdigest()
    if expected_manifest_sha256 is not None and manifest_sha != expected_manifest_sha256:
        raise PackageError(f"{pkg / MANIFEST_NAME}: sha256 {manifest_sha} differs from the pinned {expected_manifest_sha256}")
    obj = parse_json_bytes(raw)
    from pydantic import ValidationError

    try:
        listing = FilesOnly.model_validate({"files": obj.get("files")})
    except ValidationError as exc:
        raise PackageError(validation_message(exc)) from None

    present = {e.name: e for e in os.scandir(pkg)}
    extra = sorted(set(present) - set(listing.files) - {MANIFEST_NAME})
    if extra:
        raise PackageError(f"{pkg}: entries not listed in {MANIFEST_NAME}: {extra[:8]}; a package holds only the files it lists")
    contents: dict[str, bytes] = {}
    for name, entry in sorted(listing.files.items()):
        f = pkg / name
        st = _regular_file(f, f"listed file {name!r}")
        if st.st_size != entry.size:
            raise PackageError(f"{f}: {st.st_size} bytes, but {MANIFEST_NAME} files.{name}.size says {entry.size}")
        digest, data = _hash_file(f, min(entry.size, MAX_FILE_BYTES), keep=entry.role in PARSED_ROLES)
        if digest != entry.sha256:
            raise PackageError(f"{f}: sha256 mismatch (file {digest}, {MANIFEST_NAME} files.{name}.sha256 {entry.sha256}); "
                               "the file was changed or corrupted after export")
        if data is not None:
            contents[name] = data
    manifest = parse_manifest(obj)
    return CheckedPackage(pkg, manifest, manifest_sha, contents)


# -- building the model ---------------------------------------------------------------------------
def component_requests(m: AnyManifest) -> list[ComponentRequest]:
    if isinstance(m, ManifestV1):
        return [ComponentRequest("generator", m.architecture.key, m.architecture.args, "architecture.key", "architecture.args")]
    return [ComponentRequest(role, arch.key, arch.args, f"components.{role}.architecture.key", f"components.{role}.architecture.args")
            for role, arch in m.component_architectures().items()]


def declared_by(m: AnyManifest) -> dict[str, Declared]:
    """What the manifest says its components are, with the field that says it (v1 keeps its field names)."""
    out, lab = m.output, m.labels
    v1 = isinstance(m, ManifestV1)
    declared = {
        "channels": Declared(out.channels, "output.channels"),
        "num_classes": Declared(len(lab.class_names) if lab.conditional else 0, "labels.class_names (count)"),
    }
    if m.latent_spec is not None:
        declared["latent_dim"] = Declared(m.latent_spec.dim, "latent.dim" if v1 else "inputs.latent.dim")
    if m.kind != "translation":
        declared["image_size"] = Declared((out.height, out.width), "output.height/width")
    else:
        declared["channels"] = Declared(m.inputs.image.channels, "inputs.image.channels")
        declared["size_multiple"] = Declared(m.inputs.image.size_multiple, "inputs.image.size_multiple")
    return declared


# -- public API ----------------------------------------------------------------------------------
def _loaded(checked: CheckedPackage, device: torch.device) -> LoadedModel:
    m = checked.manifest
    where = str(checked.path / MANIFEST_NAME)
    kind = kind_class(m.kind, where, "kind", PackageError)
    declared = declared_by(m)
    planned = plan_components(kind, component_requests(m), declared, where, PackageError)  # nothing is built before this
    modules: dict[str, list[torch.nn.Module]] = {}
    files = m.weights_files()
    # sizes were checked against the directory in step 1, so the listed size is the file's
    check_weights_size(planned, {role: [(m.files[f].size, str(checked.path / f))] for role, f in files.items()}, where, PackageError)
    for role, p in planned.items():
        module = build_component(kind, p, declared, where, PackageError)
        w = str(checked.path / files[role])
        module.load_state_dict(load_state_dict_checked(checked.contents[files[role]], module.state_dict(), w, PackageError))
        modules[role] = [module.to(device).eval()]
    sources = [str(checked.path / files[role]) for role in planned]
    extras: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {
        "format": m.format, "kind": m.kind, "class_names": list(m.labels.class_names), "package": m.name,
        "manifest_sha256": checked.manifest_sha256, "output": m.output.model_dump(mode="json"),
        "components": {role: {"arch": a.key, "args": dict(a.args)} for role, a in m.component_architectures().items()},
    }
    if "generator" in meta["components"]:
        meta["arch"], meta["args"] = meta["components"]["generator"]["arch"], meta["components"]["generator"]["args"]
    codes = getattr(getattr(m, "inputs", None), "codes", None)
    if codes is not None:
        G = modules["generator"][0]
        f = str(checked.path / codes.file)
        extras = load_state_dict_checked(checked.contents[codes.file], codes_template(codes.count, G.latent_dim, codes.labels), f, PackageError)
        meta["codes_source"] = f
        sources.append(f)
    return kind.assemble(modules, extras, meta=meta, sources=sources, device=device, error=PackageError)


def load_package(path: str | Path, device: str | torch.device = "cpu", *, expected_manifest_sha256: str | None = None) -> LoadedModel:
    """The package's model (its kind: noise, translation, inversion), after every check in this module's docstring.

    ``expected_manifest_sha256`` pins the manifest itself (e.g. to the hash a registry recorded).
    """
    checked = check_package_files(path, expected_manifest_sha256)
    return _loaded(checked, torch.device(device))


@dataclass
class VerifyReport:
    path: str
    name: str
    manifest_sha256: str
    ok: bool
    checks: list[str] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # seed -> {match, max_abs_diff}
    tolerance: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "manifest_sha256": self.manifest_sha256, "ok": self.ok,
                "checks": self.checks, "samples": self.samples, "tolerance": self.tolerance}


def sample_digest(images: torch.Tensor) -> str:
    """sha256 of float32 little-endian, C-order bytes: the format of the manifest's reference hashes."""
    arr = images.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4", copy=False)
    return hashlib.sha256(arr.tobytes()).hexdigest()


def reference_tensors(data: bytes, manifest: AnyManifest, where: str) -> dict[str, torch.Tensor]:
    ref = manifest.reference_samples
    o = manifest.output
    shape = (ref.n_per_seed, o.channels, o.height, o.width)
    expected = {name: torch.empty(shape, device="meta") for name in manifest.reference_keys()}  # shapes only, nothing allocated
    tensors = load_state_dict_checked(data, expected, where, PackageError)
    for name, t in tensors.items():
        if float(t.min()) < 0 or float(t.max()) > 1:
            raise PackageError(f"{where}: {name} holds values outside [0, 1]")
    return tensors


def reference_images(gen: LoadedModel, manifest: AnyManifest) -> dict[str, torch.Tensor]:
    """What the reference file must hold, recomputed: the model's images for the manifest's seeds."""
    ref, o = manifest.reference_samples, manifest.output
    return gen.reference_images(ref.seeds, ref.n_per_seed, (o.height, o.width))


def verify_package(path: str | Path, device: str | torch.device = "cpu", *, tolerance: float | None = None,
                   expected_manifest_sha256: str | None = None) -> VerifyReport:
    """All load checks, then the fixed-seed reference samples (for a translator: its translations of
    synthetic inputs made from each seed, in every direction).

    Cross-device policy: on the device and build that exported the package the samples are
    bit-identical (sha256 match). Elsewhere (GPU vs CPU, other BLAS/oneDNN kernels, thread counts)
    float results legitimately differ in the last bits, so a hash mismatch is accepted when every
    pixel is within ``tolerance`` (manifest default 2e-3 in [0, 1] units, about half an 8-bit grey
    level) of the stored reference; the report says which of the two held.
    """
    checked = check_package_files(path, expected_manifest_sha256)
    m = checked.manifest
    report = VerifyReport(str(path), m.name, checked.manifest_sha256, ok=False)
    report.checks.append(f"sha256 and size of {len(m.files)} listed files match; no unlisted files")
    report.checks.append(f"manifest matches schema v{m.schema_version} (strict)")
    gen = _loaded(checked, torch.device(device))
    archs = m.component_architectures()
    report.checks.append(f"kind {m.kind!r}; " + ", ".join(f"{role}: architecture {a.key!r}" for role, a in archs.items())
                         + " from breastgan's registry; arguments validated and consistent with the manifest")
    report.checks.append(f"weights ({len(archs)} component{'s' if len(archs) > 1 else ''}): safetensors, tensor names/dtypes/shapes match, all finite")
    ref_file = m.file_for("reference_samples")
    refs = reference_tensors(checked.contents[ref_file], m, str(checked.path / ref_file))
    tol = m.reference_samples.tolerance if tolerance is None else tolerance
    report.tolerance = tol
    computed = reference_images(gen, m)
    all_ok = True
    for name, key in m.reference_keys().items():
        images = computed[name]
        digest = sample_digest(images)
        stored = refs[name]
        diff = float((images - stored).abs().max())
        exact = digest == m.reference_samples.sha256.get(key)
        if exact and sample_digest(stored) != digest:
            exact = False  # the stored reference file disagrees with the manifest hash: trust neither
        match = "exact" if exact else ("tolerance" if diff <= tol else "mismatch")
        all_ok &= match != "mismatch"
        report.samples[key] = {"match": match, "max_abs_diff": diff}
    inputs = " (inputs: synthetic images made from each seed)" if getattr(m.reference_samples, "input_images", None) else ""
    report.checks.append(f"reference samples for seeds {m.reference_samples.seeds}{inputs}: "
                         + ", ".join(f"{s}={v['match']}" for s, v in report.samples.items()) + f" (tolerance {tol:g})")
    report.ok = all_ok
    return report
