"""The generator-package manifest: a strict, versioned pydantic schema and its safe byte-level reader.

A package is a flat directory::

    manifest.json                 this schema (never listed in itself)
    <role>.safetensors            one weights file per component (v1: generator.safetensors, EMA weights)
    codes.safetensors             kind 'inversion': the fitted latent codes
    reference_samples.safetensors images for the manifest's fixed seeds (synthetic, for verify)
    README.md                     model card
    generator.onnx                optional (kind 'noise')
    medigan_metadata.json         optional

Schema v2 (what export writes) has a ``kind`` (breastgan.generation.kinds: noise, translation,
inversion), ``components`` (role -> architecture + the name of its weights file) and ``inputs``
(``latent`` for noise and inversion, ``image`` for translation, ``codes`` for inversion). Schema v1
(one noise generator: ``architecture`` + ``latent``) is still read, with exactly its old rules.

Every model forbids unknown keys: a manifest that carries anything the schema does not name
(an import string, a hook, a pickled blob) is rejected, not ignored. Nothing in a manifest is ever
imported or evaluated: architectures are keys into breastgan's own registry.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_serializer, model_validator

FORMAT = "breastgan-generator-package"
SCHEMA_VERSION = 2  # what export writes
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "generator.safetensors"  # v1's only weights file; v2: <role>.safetensors per component
CODES_NAME = "codes.safetensors"
REFERENCE_NAME = "reference_samples.safetensors"
MODEL_CARD_NAME = "README.md"
ONNX_NAME = "generator.onnx"
MEDIGAN_NAME = "medigan_metadata.json"

# Caps that bound what a hostile package can make a loader read or allocate.
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few kB
MAX_FILE_BYTES = 4 << 30  # per listed file
MAX_JSON_DEPTH = 32

# A package file name: flat (no directories, no '..'), printable, short.
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Registry keys and label names: identifiers only, so a dotted import path ('os.system',
# 'pkg.mod:Class') can never pass as an architecture key.
Key = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
# Architecture arguments are plain JSON scalars (or short lists of them), validated again by the
# architecture's own argument model once the key is resolved.
Scalar = bool | int | float | str | None
ArgValue = Scalar | list[Scalar]


class PackageError(ValueError):
    """A package that must not be loaded; the message names the file and field at fault."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FileEntryV1(Strict):
    role: Literal["weights", "reference_samples", "model_card", "onnx", "medigan_metadata"]
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_FILE_BYTES)


class FileEntry(Strict):
    """A listed file (schema v2; also the pre-hash view of any version, whose schema then narrows the roles)."""

    role: Literal["weights", "codes", "reference_samples", "model_card", "onnx", "medigan_metadata"]
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_FILE_BYTES)


class Architecture(Strict):
    key: Key = Field(description="a generator key in breastgan's registry (breastgan models)")
    args: dict[Key, ArgValue] = Field(description="validated against the architecture's own argument model")


class LatentSpec(Strict):
    dim: int = Field(ge=1, le=4096)
    distribution: Literal["standard_normal"] = "standard_normal"
    sampler: Literal["breastgan-chunked-v1"] = Field("breastgan-chunked-v1", description="per-index latents, generation/latents.py")
    chunk: int = Field(256, ge=1)


class LabelSpec(Strict):
    conditional: bool
    class_names: list[Annotated[str, StringConstraints(max_length=64)]] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _names(self) -> "LabelSpec":
        if self.conditional and len(self.class_names) < 2:
            raise ValueError(f"a conditional generator needs at least 2 class_names, got {self.class_names}")
        if not self.conditional and self.class_names:
            raise ValueError("an unconditional generator lists no class_names")
        return self


class OutputSpec(Strict):
    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1, le=8192)
    width: int = Field(ge=1, le=8192)
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    bit_depth: Literal[8, 16] = Field(16, description="bit depth of the training images (what PNG output should keep)")
    model_range: tuple[float, float] = Field((-1.0, 1.0), description="raw network output before (x + 1) / 2")


class TrainingDataSummary(Strict):
    """Counts only: no paths, names of folders, patient or image identifiers."""

    dataset_kind: Key = Field(description="registered dataset key, e.g. 'prepared' or 'phantom'")
    n_images: int = Field(ge=0)
    n_per_class: dict[Annotated[str, StringConstraints(max_length=64)], int] = Field(default_factory=dict)
    n_patients: int | None = Field(None, ge=0, description="None when the data carries no patient ids")
    image_size: tuple[int, int]


class Preprocessing(Strict):
    steps: list[ShortText] = Field(default_factory=list, max_length=100, description="what the training images went through, in order")
    flips_in_training: list[Literal["horizontal", "vertical"]] = Field(default_factory=list)


class MetricValue(Strict):
    value: float | None
    ci95: tuple[float, float] | None = None
    n: dict[Key, int] = Field(default_factory=dict)


class AuditCheck(Strict):
    name: Key
    value: float | None
    threshold: float
    rule: Literal["<=", ">="]
    passed: bool
    ci95: tuple[float, float] | None = None


class PrivacyAuditRecord(Strict):
    status: Literal["passed", "failed", "skipped"]
    forced: bool = Field(description="exported despite a failed or skipped audit")
    override_reason: ShortText | None = None
    checks: list[AuditCheck] = Field(default_factory=list)
    thresholds: dict[Key, float] = Field(default_factory=dict)
    results: dict[Key, float | None] = Field(default_factory=dict)
    n: dict[Key, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _forced(self) -> "PrivacyAuditRecord":
        if self.status != "passed" and not self.forced:
            raise ValueError(f"privacy audit status {self.status!r} without forced=true: such a package is never written")
        if self.forced and not self.override_reason:
            raise ValueError("a forced export must record override_reason")
        return self


class DPGuarantee(Strict):
    epsilon: float = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    unit: Literal["patient", "image"] = Field(description="what one 'record' is: a patient (all their images) or one image")
    n_units: int = Field(ge=1)
    noise_multiplier: float = Field(ge=0)
    max_grad_norm: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    accountant: Literal["rdp", "prv", "gdp"]
    scope: Literal["discriminator (generator by post-processing)"] = "discriminator (generator by post-processing)"


class ReferenceSamples(Strict):
    seeds: list[int] = Field(min_length=1, max_length=16)
    n_per_seed: int = Field(ge=1, le=64)
    sha256: dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")], Sha256] = Field(
        description="seed -> sha256 of the float32 little-endian samples (N, C, H, W), C order")
    tolerance: float = Field(gt=0, le=0.1, description="max |difference| in [0, 1] units accepted when the hash differs (another device)")
    device: ShortText = Field(description="device the references were produced on")


class Versions(Strict):
    breastgan: ShortText
    torch: ShortText
    safetensors: ShortText
    python: ShortText


class ManifestV1(Strict):
    """Schema v1: one noise-to-image generator (``architecture``, ``latent``), one weights file."""

    format: Literal["breastgan-generator-package"]
    schema_version: Literal[1]
    name: Key
    description: LongText = ""
    created: ShortText
    licence: ShortText
    modality: Key = "mammography"
    architecture: Architecture
    latent: LatentSpec
    labels: LabelSpec
    output: OutputSpec
    preprocessing: Preprocessing
    training_data: TrainingDataSummary
    metrics: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-/.]{1,64}$")], MetricValue] = Field(default_factory=dict, max_length=200)
    privacy_audit: PrivacyAuditRecord
    differential_privacy: DPGuarantee | None = None
    versions: Versions
    reference_samples: ReferenceSamples
    files: dict[FileName, FileEntryV1] = Field(max_length=16)

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, FileEntryV1]) -> dict[str, FileEntryV1]:
        if MANIFEST_NAME in files:
            raise ValueError(f"{MANIFEST_NAME} cannot list itself")
        roles = [f.role for f in files.values()]
        for needed, name in (("weights", WEIGHTS_NAME), ("reference_samples", REFERENCE_NAME), ("model_card", MODEL_CARD_NAME)):
            if roles.count(needed) != 1:
                raise ValueError(f"exactly one file with role {needed!r} is required (expected {name!r}), found {roles.count(needed)}")
        for name, entry in files.items():
            if entry.role == "weights" and not name.endswith(".safetensors"):
                raise ValueError(f"{name}: weights must be a .safetensors file (no pickles, no code)")
        return files

    def file_for(self, role: str) -> str:
        return next(name for name, f in self.files.items() if f.role == role)

    # the accessors both versions offer (loader, verify, hub, model card)
    @property
    def kind(self) -> str:
        return "noise"

    def component_architectures(self) -> dict[str, Architecture]:
        return {"generator": self.architecture}

    def weights_files(self) -> dict[str, str]:
        return {"generator": self.file_for("weights")}

    @property
    def latent_spec(self) -> LatentSpec:
        return self.latent

    def reference_keys(self) -> dict[str, str]:
        """Reference tensor name -> its key in ``reference_samples.sha256`` (v1: the seed)."""
        return {f"seed_{s}": str(s) for s in self.reference_samples.seeds}


# -- schema v2 ------------------------------------------------------------------------------------
class Component(Strict):
    architecture: Architecture
    weights: FileName = Field(description="the listed file (role 'weights') holding this component's weights")


class ImageInputSpec(Strict):
    """What a translator takes: images of ``channels`` channels in [0, 1], sides multiples of ``size_multiple``."""

    channels: int = Field(ge=1, le=4)
    size_multiple: int = Field(1, ge=1, le=1024)
    directions: list[Key] = Field(min_length=1, max_length=2, description="the components, by role (a2b, b2a)")


class CodesSpec(Strict):
    count: int = Field(ge=1, le=100_000)
    file: FileName = Field(description="the listed file (role 'codes'): tensor 'codes' (count, latent dim), 'labels' (count,) if conditional")
    labels: bool = Field(False, description="the codes carry class labels (conditional generator)")


class Inputs(Strict):
    latent: LatentSpec | None = None
    image: ImageInputSpec | None = None
    codes: CodesSpec | None = None

    def present(self) -> list[str]:
        return [k for k in ("latent", "image", "codes") if getattr(self, k) is not None]

    @model_serializer(mode="wrap")
    def _only_present(self, handler: Any) -> dict[str, Any]:
        # a kind's inputs, nothing else: absent inputs are left out rather than written as null
        return {k: v for k, v in handler(self).items() if v is not None}


RefName = Annotated[str, StringConstraints(pattern=r"^seed_[0-9]{1,10}(_[a-z][a-z0-9_\-]{0,63})?$")]


class ReferenceSamplesV2(Strict):
    seeds: list[int] = Field(min_length=1, max_length=16)
    n_per_seed: int = Field(ge=1, le=64)
    sha256: dict[RefName, Sha256] = Field(description="reference tensor name (seed_<s>, or seed_<s>_<direction> for translation) "
                                                      "-> sha256 of its float32 little-endian samples (N, C, H, W), C order")
    tolerance: float = Field(gt=0, le=0.1, description="max |difference| in [0, 1] units accepted when the hash differs (another device)")
    device: ShortText = Field(description="device the references were produced on")
    input_images: Literal["breastgan-synthetic-v1"] | None = Field(
        None, description="translation: the inputs are generation.latents.synthetic_images of the seed (never real images)")


class ManifestV2(Strict):
    """Schema v2: a ``kind`` of model, its ``components`` (one weights file each) and its ``inputs``."""

    format: Literal["breastgan-generator-package"]
    schema_version: Literal[2]
    kind: Key = Field(description="a kind in breastgan.generation.kinds: noise, translation, inversion")
    name: Key
    description: LongText = ""
    created: ShortText
    licence: ShortText
    modality: Key = "mammography"
    components: dict[Key, Component] = Field(min_length=1, max_length=4)
    inputs: Inputs
    labels: LabelSpec
    output: OutputSpec
    preprocessing: Preprocessing
    training_data: TrainingDataSummary
    metrics: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-/.]{1,64}$")], MetricValue] = Field(default_factory=dict, max_length=200)
    privacy_audit: PrivacyAuditRecord
    differential_privacy: DPGuarantee | None = None
    versions: Versions
    reference_samples: ReferenceSamplesV2
    files: dict[FileName, FileEntry] = Field(max_length=16)

    @model_validator(mode="after")
    def _consistent(self) -> "ManifestV2":
        from breastgan.generation.kinds import KINDS

        if MANIFEST_NAME in self.files:
            raise ValueError(f"files: {MANIFEST_NAME} cannot list itself")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not a breastgan generator kind; available: {', '.join(KINDS.names())}")
        kind = KINDS.get(self.kind)
        kind.check_roles(list(self.components), "", "components", ValueError)
        kind.check_inputs(self.inputs.present(), "", "inputs", ValueError, package=True)
        named: dict[str, str] = {}
        for role, comp in self.components.items():
            entry = self.files.get(comp.weights)
            if entry is None or entry.role != "weights":
                raise ValueError(f"components.{role}.weights: {comp.weights!r} is not listed in files with role 'weights'")
            if comp.weights in named:
                raise ValueError(f"components.{named[comp.weights]} and components.{role} name the same weights file {comp.weights!r}; "
                                 "one weights file per component")
            named[comp.weights] = role
        for fname, entry in self.files.items():
            if entry.role == "weights" and fname not in named:
                raise ValueError(f"files.{fname}: a weights file that no component names (components: {sorted(self.components)})")
            if entry.role in ("weights", "codes") and not fname.endswith(".safetensors"):
                raise ValueError(f"files.{fname}: {entry.role} must be a .safetensors file (no pickles, no code)")
        roles = [f.role for f in self.files.values()]
        for needed, name in (("reference_samples", REFERENCE_NAME), ("model_card", MODEL_CARD_NAME)):
            if roles.count(needed) != 1:
                raise ValueError(f"files: exactly one file with role {needed!r} is required (expected {name!r}), found {roles.count(needed)}")
        for optional in ("onnx", "medigan_metadata"):
            if roles.count(optional) > 1:
                raise ValueError(f"files: at most one file with role {optional!r}, found {roles.count(optional)}")
        codes_files = [n for n, f in self.files.items() if f.role == "codes"]
        if self.inputs.codes is None and codes_files:
            raise ValueError(f"files: {codes_files} have role 'codes' but kind {self.kind!r} takes no inputs.codes")
        if self.inputs.codes is not None and codes_files != [self.inputs.codes.file]:
            raise ValueError(f"inputs.codes.file is {self.inputs.codes.file!r}; files must list exactly that one file with role 'codes' "
                             f"(found {codes_files})")
        if self.inputs.codes is not None:
            if self.inputs.codes.labels != self.labels.conditional:
                raise ValueError(f"inputs.codes.labels is {self.inputs.codes.labels} but labels.conditional is {self.labels.conditional}")
            if self.reference_samples.n_per_seed > self.inputs.codes.count:
                raise ValueError(f"reference_samples.n_per_seed ({self.reference_samples.n_per_seed}) exceeds inputs.codes.count "
                                 f"({self.inputs.codes.count}): an inversion renders its codes only")
        ref = self.reference_samples
        if self.inputs.image is not None:
            img = self.inputs.image
            if sorted(img.directions) != sorted(self.components):
                raise ValueError(f"inputs.image.directions {img.directions} must be the components {sorted(self.components)}")
            if len(set(img.directions)) != len(img.directions):
                raise ValueError(f"inputs.image.directions {img.directions} repeats a direction")
            if self.output.channels != img.channels:
                raise ValueError(f"output.channels is {self.output.channels} but inputs.image.channels is {img.channels}; "
                                 "a translator keeps the shape")
            if self.output.height % img.size_multiple or self.output.width % img.size_multiple:
                raise ValueError(f"output.height/width {self.output.height}x{self.output.width} (the reference size) must be multiples "
                                 f"of inputs.image.size_multiple {img.size_multiple}")
            if self.labels.conditional:
                raise ValueError("labels.conditional: a translation model takes no class labels")
            if ref.input_images is None:
                raise ValueError("reference_samples.input_images: a translation package's reference inputs must be named "
                                 "('breastgan-synthetic-v1': synthetic images made from the seed)")
        elif ref.input_images is not None:
            raise ValueError(f"reference_samples.input_images: kind {self.kind!r} takes no input images")
        want = set(self.reference_keys())
        if set(ref.sha256) != want:
            raise ValueError(f"reference_samples.sha256: keys {sorted(ref.sha256)} must be {sorted(want)} (one per seed"
                             + (" and direction)" if self.inputs.image is not None else ")"))
        return self

    def file_for(self, role: str) -> str:
        return next(name for name, f in self.files.items() if f.role == role)

    def component_architectures(self) -> dict[str, Architecture]:
        return {role: c.architecture for role, c in self.components.items()}

    def weights_files(self) -> dict[str, str]:
        return {role: c.weights for role, c in self.components.items()}

    @property
    def latent_spec(self) -> LatentSpec | None:
        return self.inputs.latent

    def reference_keys(self) -> dict[str, str]:
        """Reference tensor name -> its key in ``reference_samples.sha256`` (v2: the name itself)."""
        seeds = self.reference_samples.seeds
        if self.inputs.image is not None:
            names = [f"seed_{s}_{d}" for s in seeds for d in sorted(self.components)]
        else:
            names = [f"seed_{s}" for s in seeds]
        return {n: n for n in names}


Manifest = ManifestV2  # the schema export writes
AnyManifest = ManifestV1 | ManifestV2


class FilesOnly(BaseModel):
    """The part of the manifest read before its hashes are checked: only the file list, strictly typed."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    files: dict[FileName, FileEntry] = Field(max_length=16)


def _reject_constant(name: str) -> Any:
    raise PackageError(f"{MANIFEST_NAME}: non-standard JSON constant {name} (NaN/Infinity are not allowed)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a duplicated key; a package must mean one thing.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PackageError(f"{MANIFEST_NAME}: key {k!r} appears twice in one object")
        out[k] = v
    return out


def _depth(obj: Any, limit: int) -> int:
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse_json_bytes(raw: bytes, where: str = MANIFEST_NAME) -> dict[str, Any]:
    """Bytes -> JSON object, with the failure modes of a hostile file turned into :class:`PackageError`."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(f"{where}: {len(raw)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except PackageError:
        raise
    except RecursionError:
        raise PackageError(f"{where}: JSON nested too deeply") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise PackageError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PackageError(f"{where}: expected a JSON object at the top level, got {type(obj).__name__}")
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise PackageError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def validation_message(exc: ValidationError, where: str = MANIFEST_NAME, version: int = SCHEMA_VERSION) -> str:
    """One line per problem, naming the manifest field, what was found and what is allowed."""
    lines = [f"{where}: does not match the breastgan package schema v{version}:"]
    for err in exc.errors()[:20]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (the schema forbids keys it does not define)")
        elif not err["loc"]:  # a rule across fields: the message names them, the input is the whole manifest
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        else:
            shown = repr(err.get("input"))
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')} (got {shown[:80]})")
    return "\n".join(lines)


def parse_manifest(obj: dict[str, Any]) -> AnyManifest:
    fmt, version = obj.get("format"), obj.get("schema_version")
    if fmt != FORMAT:
        raise PackageError(f"{MANIFEST_NAME}: format is {fmt!r}; expected {FORMAT!r}")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise PackageError(f"{MANIFEST_NAME}: schema_version {version!r} is not supported by this breastgan "
                           f"(supports {', '.join(map(str, SUPPORTED_VERSIONS))})")
    model = ManifestV1 if version == 1 else ManifestV2
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise PackageError(validation_message(exc, version=version)) from None


def manifest_bytes(manifest: AnyManifest) -> bytes:
    """Canonical serialisation (sorted keys): the same manifest always has the same sha256."""
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode("utf-8")
