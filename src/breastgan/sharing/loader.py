"""Load and verify generator packages without executing anything that comes with them.

The order is the one trust.md prescribes, and it matters: nothing from a file is parsed before
its bytes are known to be the ones the manifest lists.

1. ``manifest.json`` is read as bytes (size-capped); only its file list is decoded, with a strict
   model; every listed file's size and sha256 are checked and any other entry in the directory
   (an extra file, a sub-directory, a symlink) is refused.
2. The manifest is parsed with the strict, versioned schema (unknown keys are errors).
3. The architecture key is resolved in breastgan's registry and its arguments validated by that
   architecture's own argument model; they must agree with the manifest's latent/output/label spec.
4. The weights' safetensors header is read and checked (names, dtypes, shapes) against the
   instantiated model before any tensor is materialised; values must be finite.
5. ``verify_package`` also regenerates the reference samples for the manifest's seeds.

Files whose bytes were hashed are parsed from those same in-memory bytes, so a file swapped on disk
between the check and the load is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from breastgan.generation.loader import LoadedGenerator
from breastgan.sharing.manifest import (
    MANIFEST_NAME,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    FilesOnly,
    Manifest,
    PackageError,
    parse_json_bytes,
    parse_manifest,
    validation_message,
)

# safetensors dtype codes for the torch dtypes a generator state dict holds
SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
}
MAX_SAFETENSORS_HEADER = 16 << 20
# files parsed after the hash check are kept in memory (small for the generators breastgan trains)
PARSED_ROLES = ("weights", "reference_samples")


@dataclass
class CheckedPackage:
    path: Path
    manifest: Manifest
    manifest_sha256: str
    contents: dict[str, bytes]  # role -> bytes, for the files that are parsed later


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
            contents[entry.role] = data
    manifest = parse_manifest(obj)
    return CheckedPackage(pkg, manifest, manifest_sha, contents)


# -- safetensors ---------------------------------------------------------------------------------
def read_safetensors_header(data: bytes, where: str) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file, checked for shape before any tensor is read."""
    if len(data) < 8:
        raise PackageError(f"{where}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise PackageError(f"{where}: not a safetensors file (header length {n} is impossible for a {len(data)}-byte file); "
                           "weights must be safetensors, pickled checkpoints are refused")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PackageError(f"{where}: safetensors header is not valid JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise PackageError(f"{where}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    for name, spec in header.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)):
            raise PackageError(f"{where}: tensor {name!r} has a malformed header entry")
    return header


def load_state_dict_checked(data: bytes, expected: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    header = read_safetensors_header(data, where)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise PackageError(f"{where}: tensors do not match the architecture (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, ref in expected.items():
        spec = header[name]
        want_dtype = SAFETENSORS_DTYPES.get(ref.dtype, str(ref.dtype))
        if spec["dtype"] != want_dtype:
            raise PackageError(f"{where}: tensor {name!r} has dtype {spec['dtype']}, the architecture expects {want_dtype}")
        if list(spec["shape"]) != list(ref.shape):
            raise PackageError(f"{where}: tensor {name!r} has shape {spec['shape']}, the architecture expects {list(ref.shape)}")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise PackageError(f"{where}: invalid safetensors data ({exc})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PackageError(f"{where}: tensor {name!r} holds NaN/Inf")
    return tensors


# -- architecture --------------------------------------------------------------------------------
def build_generator_from_manifest(manifest: Manifest, where: str) -> torch.nn.Module:
    """Step 3: the registry key and validated args; checked against the manifest's own specs."""
    from breastgan.models.registry import GENERATORS
    from breastgan.registry import ConfigArgumentError

    key = manifest.architecture.key
    if key not in GENERATORS:
        raise PackageError(f"{where}: architecture.key {key!r} is not a breastgan generator; available: {', '.join(GENERATORS.names())}")
    entry = GENERATORS.entry(key)
    try:
        args = entry.validate_args(dict(manifest.architecture.args), "architecture.args").model_dump()
    except ConfigArgumentError as exc:
        raise PackageError(f"{where}: {exc}") from None
    model = entry.obj(**args)
    out, lab = manifest.output, manifest.labels
    checks = {
        "latent.dim": (manifest.latent.dim, model.latent_dim),
        "output.channels": (out.channels, model.channels),
        "output.height/width": ((out.height, out.width), tuple(model.image_size)),
        "labels.class_names (count)": (len(lab.class_names) if lab.conditional else 0, model.num_classes),
    }
    for fieldname, (declared, built) in checks.items():
        if declared != built:
            raise PackageError(f"{where}: {fieldname} is {declared!r} but architecture.args give {built!r}")
    return model


# -- public API ----------------------------------------------------------------------------------
def _loaded(checked: CheckedPackage, device: torch.device) -> LoadedGenerator:
    m = checked.manifest
    where = str(checked.path / m.file_for("weights"))
    model = build_generator_from_manifest(m, str(checked.path / MANIFEST_NAME))
    tensors = load_state_dict_checked(checked.contents["weights"], model.state_dict(), where)
    model.load_state_dict(tensors)
    model = model.to(device).eval()
    meta = {
        "format": m.format, "arch": m.architecture.key, "args": dict(m.architecture.args), "class_names": list(m.labels.class_names),
        "package": m.name, "manifest_sha256": checked.manifest_sha256, "output": m.output.model_dump(mode="json"),
    }
    return LoadedGenerator([model], meta, [where], device)


def load_package(path: str | Path, device: str | torch.device = "cpu", *, expected_manifest_sha256: str | None = None) -> LoadedGenerator:
    """A :class:`LoadedGenerator` from a package, after every check in this module's docstring.

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


def reference_tensors(data: bytes, manifest: Manifest, where: str) -> dict[str, torch.Tensor]:
    ref = manifest.reference_samples
    o = manifest.output
    shape = torch.Size([ref.n_per_seed, o.channels, o.height, o.width])
    expected = {f"seed_{s}": torch.zeros(shape) for s in ref.seeds}
    tensors = load_state_dict_checked(data, expected, where)
    for name, t in tensors.items():
        if float(t.min()) < 0 or float(t.max()) > 1:
            raise PackageError(f"{where}: {name} holds values outside [0, 1]")
    return tensors


def verify_package(path: str | Path, device: str | torch.device = "cpu", *, tolerance: float | None = None,
                   expected_manifest_sha256: str | None = None) -> VerifyReport:
    """All load checks, then the fixed-seed reference samples.

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
    report.checks.append(f"architecture {m.architecture.key!r} from breastgan's registry; arguments validated")
    report.checks.append("weights: safetensors, tensor names/dtypes/shapes match, all finite")
    refs = reference_tensors(checked.contents["reference_samples"], m, str(checked.path / m.file_for("reference_samples")))
    tol = m.reference_samples.tolerance if tolerance is None else tolerance
    report.tolerance = tol
    all_ok = True
    for seed in m.reference_samples.seeds:
        images = gen.sample(m.reference_samples.n_per_seed, seed=seed)
        digest = sample_digest(images)
        stored = refs[f"seed_{seed}"]
        diff = float((images - stored).abs().max())
        exact = digest == m.reference_samples.sha256.get(str(seed))
        if exact and sample_digest(stored) != digest:
            exact = False  # the stored reference file disagrees with the manifest hash: trust neither
        match = "exact" if exact else ("tolerance" if diff <= tol else "mismatch")
        all_ok &= match != "mismatch"
        report.samples[str(seed)] = {"match": match, "max_abs_diff": diff}
    report.checks.append(f"reference samples for seeds {m.reference_samples.seeds}: "
                         + ", ".join(f"{s}={v['match']}" for s, v in report.samples.items()) + f" (tolerance {tol:g})")
    report.ok = all_ok
    return report
