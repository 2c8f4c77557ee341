"""Kinds of generator: what a loaded model consumes and how it makes images.

============  =========================  =====================================================
kind          components (roles)         makes
============  =========================  =====================================================
noise         generator                  G(z, labels) from per-index latents (latents.py)
translation   a2b and/or b2a             T(x): an image in [0, 1] in, one of the same shape out
inversion     generator + fitted codes   G(code_i): renderings of codes fitted to images
============  =========================  =====================================================

Every loaded kind offers ``synthesize(n, seed)`` and ``synthesize_range(start, stop, seed)`` ->
(N, C, H, W) float32 in [0, 1] (image i depends only on (seed, i)), and ``capacity`` (how many
images it can synthesize; None = unlimited), so evaluation, the privacy audit, export and the
utility harness take images from any kind through one call. A translator synthesizes the
translations of the images bound to it (:meth:`LoadedTranslator.bind`); inversion synthesizes its
reconstructions; both are deterministic, so ``seed`` does not change them.

Components are resolved by key in breastgan's generator registry, never imported from a file:
:func:`plan_components` validates every component's arguments with the architecture's own model
and checks them against what the model file or manifest declares *before any module is built*;
:func:`build_component` builds one and checks the attributes the module derives in code. Weights
then load through :mod:`breastgan.models.weights` (safetensors header checked against the module
before any tensor is read). The same functions serve run directories (``generation.loader``) and
packages (``sharing.loader``); callers pass the exception type their users expect.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from breastgan.generation.latents import latents_for, synthetic_images
from breastgan.models.registry import GENERATORS
from breastgan.registry import ConfigArgumentError, Entry, Registry


class GeneratorLoadError(ValueError):
    """A model that cannot be loaded as asked; the message names the file, the field and what was expected."""


TRANSLATION_TAG = "translation"  # registry tag of image-to-image architectures (forward(x) -> same shape)
NOISE_CONTRACT = ("latent_dim", "num_classes", "image_size", "channels")


# -- building components ------------------------------------------------------------------------
@dataclass(frozen=True)
class Declared:
    """A value the model file / manifest declares about its components, and the field declaring it."""

    value: Any
    field: str


@dataclass(frozen=True)
class ComponentRequest:
    """One component as a file describes it: a registry key and arguments, with their field names."""

    role: str
    arch: str
    args: Mapping[str, Any]
    key_field: str  # e.g. "architecture.key", "components.a2b.architecture.key", "components.a2b.arch"
    args_field: str


@dataclass
class PlannedComponent:
    request: ComponentRequest
    entry: Entry
    args: dict[str, Any]  # validated by the architecture's argument model
    size: "ModuleSize | None" = None  # what building it would allocate (counted on the meta device)

    def build(self) -> nn.Module:
        return self.entry.obj(**self.args)


# -- bounding what a model file / manifest can make the loader allocate -------------------------
# A hostile or corrupt file can hold arguments that are each valid but describe a model of billions of
# parameters (num_classes 10^9 -> a 10^9-row embedding; maximal widths at 256 px -> 1.3e9 parameters,
# 4.8 GB and 18 s before the weights check said anything). Sizes are therefore counted before any
# module is built, by building it on the meta device (shapes only, no storage; milliseconds).
MAX_PARAMETERS = 1 << 30  # elements in parameters + buffers of one component (4 GiB as float32, MAX_FILE_BYTES of a package)
SMALL_MODULE_BYTES = 64 << 20  # building a module this small costs little; above it, its weights file must be able to hold it


@dataclass(frozen=True)
class ModuleSize:
    elements: int  # parameters + buffers
    nbytes: int  # of its state dict, in the dtypes the module holds (what its weights file must at least contain)
    largest: str  # name of the largest tensor
    largest_shape: tuple[int, ...]


class _SkipRandomInit(TorchFunctionMode):
    """Random initialisers become no-ops: on meta tensors they only cost time (the first ``normal_`` on
    a meta tensor imports torch's reference implementations, 2.6 s here) and shapes are all we count."""

    SKIP = frozenset({"normal_", "uniform_", "erfinv_", "exponential_", "log_normal_", "cauchy_", "geometric_", "random_", "bernoulli_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.SKIP:  # Tensor.normal_(...) or nn.init.normal_(tensor=...)
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def module_size(entry: Entry, args: Mapping[str, Any]) -> ModuleSize:
    """Elements and bytes of the module ``entry`` builds from ``args``, without allocating any tensor."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"), _SkipRandomInit():  # nor moving the caller's RNG
        module = entry.obj(**args)
    state = module.state_dict()
    if not state:
        return ModuleSize(0, 0, "", ())
    name, big = max(state.items(), key=lambda kv: kv[1].numel())
    unique = list({id(t): t for t in state.values()}.values())  # a tied weight is allocated (and stored) once: a lower bound
    return ModuleSize(sum(t.numel() for t in unique), sum(t.numel() * t.element_size() for t in unique), name, tuple(big.shape))


def _main_culprit(p: PlannedComponent, total: int) -> str:
    """Which argument makes the module big: the one whose default shrinks it most (asked only when it is too big)."""
    model = p.entry.args_model
    best: tuple[int, str, Any, Any] | None = None
    for name, value in p.args.items():
        field_info = model.model_fields.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or field_info is None or field_info.is_required():
            continue
        default = field_info.default
        if default == value:
            continue
        try:
            smaller = module_size(p.entry, {**p.args, name: default}).elements
        except Exception:  # noqa: BLE001 - an argument combination the architecture refuses tells nothing
            continue
        if best is None or total - smaller > best[0]:
            best = (total - smaller, name, value, default)
    if best is None or best[0] <= 0:
        return ""
    saved, name, value, default = best
    return f"; most of them come from {p.request.args_field}.{name} = {value!r} ({saved:,} elements more than with its default {default!r})"


def _check_size(p: PlannedComponent, where: str, error: type[Exception], max_elements: int) -> None:
    try:
        size = module_size(p.entry, p.args)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        raise error(f"{where}: {p.request.args_field}: {p.request.arch!r} cannot be built from these arguments ({exc})") from None
    p.size = size
    if size.elements > max_elements:
        raise error(f"{where}: {p.request.args_field} describe a {p.request.arch!r} of {size.elements:,} parameters and buffers "
                    f"({size.nbytes / 2**30:.1f} GiB), over the loader's bound of {max_elements:,}; the largest tensor is "
                    f"{size.largest} of shape {list(size.largest_shape)}{_main_culprit(p, size.elements)}")


def check_weights_size(planned: Mapping[str, PlannedComponent], weights_bytes: Mapping[str, Sequence[tuple[int, str]]],
                       where: str, error: type[Exception]) -> None:
    """Each component's state dict must fit in its weights file(s) (role -> [(size in bytes, file name)]).

    Tensors load with exactly the module's dtypes, so a weights file smaller than the module's state
    dict can never load: refusing it here, before anything is built, keeps a file of a few kB from
    making the loader allocate gigabytes first. Modules under ``SMALL_MODULE_BYTES`` are left to the
    safetensors header check, whose message names the tensors that differ.
    """
    for role, files in weights_bytes.items():
        p = planned.get(role)
        if p is None or p.size is None or p.size.nbytes <= SMALL_MODULE_BYTES:
            continue
        for nbytes, name in files:
            if p.size.nbytes > nbytes:
                raise error(f"{where}: {p.request.args_field} describe a {p.request.arch!r} whose weights take {p.size.nbytes:,} bytes "
                            f"({p.size.elements:,} elements), but {name} holds only {nbytes:,} bytes; the arguments do not "
                            f"describe these weights{_main_culprit(p, p.size.elements)}")


def _normalise(attr: str, value: Any) -> Any:
    if attr == "image_size":
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, value)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return tuple(int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value)
    return value


def _built_attribute(module: nn.Module, attr: str) -> Any:
    if attr == "size_multiple":
        return int(getattr(module, "size_multiple", 1))
    value = getattr(module, attr, None)
    return tuple(value) if attr == "image_size" and value is not None else value


def kind_class(name: str, where: str, field: str, error: type[Exception]) -> type["LoadedModel"]:
    if name not in KINDS:
        raise error(f"{where}: {field} {name!r} is not a breastgan generator kind; available: {', '.join(KINDS.names())}")
    return KINDS.get(name)


def plan_components(kind: type["LoadedModel"], requests: Sequence[ComponentRequest], declared: Mapping[str, Declared],
                    where: str, error: type[Exception], max_elements: int = MAX_PARAMETERS) -> dict[str, PlannedComponent]:
    """Resolve every key, validate every argument set, check them against ``declared`` and bound each
    component's size (``max_elements`` parameters + buffers, counted on the meta device); builds nothing."""
    planned: dict[str, PlannedComponent] = {}
    for req in requests:
        if req.arch not in GENERATORS:
            raise error(f"{where}: {req.key_field} {req.arch!r} is not a breastgan generator; available: {', '.join(GENERATORS.names())}")
        entry = GENERATORS.entry(req.arch)
        translator = TRANSLATION_TAG in entry.tags
        if translator != kind.TRANSLATOR:
            what = "an image-to-image translator" if translator else "a noise-to-image generator"
            need = (f"an image-to-image translator (an architecture registered with the tag {TRANSLATION_TAG!r})"
                    if kind.TRANSLATOR else "a noise-to-image generator G(z, labels)")
            raise error(f"{where}: {req.key_field} {req.arch!r} is {what}; kind {kind.kind!r} needs {need}")
        try:
            args = entry.validate_args(dict(req.args), req.args_field).model_dump()
        except ConfigArgumentError as exc:
            raise error(f"{where}: {exc}") from None
        planned[req.role] = PlannedComponent(req, entry, args)
    for p in planned.values():
        for attr in kind.COMPARED:
            d = declared.get(attr)
            if d is None or d.value is None or attr not in p.args:
                continue
            got = _normalise(attr, p.args[attr])
            if _normalise(attr, d.value) != got:
                raise error(f"{where}: {d.field} is {d.value!r} but {p.request.args_field} give {got!r} "
                            f"({p.request.args_field}.{attr})")
    for p in planned.values():  # only after every consistency rule: those name the problem more precisely
        _check_size(p, where, error, max_elements)
    return planned


def build_component(kind: type["LoadedModel"], planned: PlannedComponent, declared: Mapping[str, Declared], where: str,
                    error: type[Exception]) -> nn.Module:
    """Instantiate one planned component and check what it derives in code (contract, declared attributes)."""
    module = planned.build()
    req = planned.request
    missing = [a for a in kind.CONTRACT if not hasattr(module, a)]
    if missing:
        raise error(f"{where}: {req.key_field} {req.arch!r} builds a {type(module).__name__} without {missing}; "
                    f"kind {kind.kind!r} needs components with the attributes {list(kind.CONTRACT)}")
    for attr in kind.COMPARED:
        d = declared.get(attr)
        if d is None or d.value is None:
            continue
        built = _built_attribute(module, attr)
        if built is not None and _normalise(attr, d.value) != _normalise(attr, built):
            raise error(f"{where}: {d.field} is {d.value!r} but {req.args_field} build a model with {attr} {built!r}")
    return module


def codes_template(count: int, latent_dim: int, conditional: bool) -> dict[str, torch.Tensor]:
    """Names, dtypes and shapes of an inversion's codes file (meta tensors: nothing is allocated)."""
    out = {"codes": torch.empty(count, latent_dim, device="meta")}
    if conditional:
        out["labels"] = torch.empty(count, dtype=torch.long, device="meta")
    return out


# -- the kinds ----------------------------------------------------------------------------------
KINDS: Registry[type["LoadedModel"]] = Registry("generator kind")


class LoadedModel(ABC):
    """What every loaded kind offers; subclasses declare their roles, inputs and component contract."""

    kind: ClassVar[str] = ""
    ROLES: ClassVar[tuple[str, ...]] = ()  # allowed component roles
    REQUIRED_ROLES: ClassVar[tuple[str, ...]] = ()
    INPUTS_REQUIRED: ClassVar[frozenset[str]] = frozenset()  # keys of the model file's / manifest's ``inputs``
    INPUTS_ALLOWED: ClassVar[frozenset[str]] = frozenset()
    PACKAGE_INPUTS: ClassVar[frozenset[str]] = frozenset()  # what a package manifest must declare (a run may leave it to the args)
    COMPARED: ClassVar[tuple[str, ...]] = ()  # declared attributes compared with each component
    CONTRACT: ClassVar[tuple[str, ...]] = ()  # attributes each built component must have
    TRANSLATOR: ClassVar[bool] = False  # components are image-to-image architectures
    ENSEMBLE_ROLE: ClassVar[str | None] = None  # the role a snapshot ensemble replaces (None: no ensembles)

    meta: dict[str, Any]
    sources: list[str]
    device: torch.device
    channels: int

    # -- rules used by both loaders --------------------------------------------------------------
    @classmethod
    def check_roles(cls, roles: Sequence[str], where: str, field: str, error: type[Exception]) -> None:
        """Component roles against the kind's; ``where`` (a file, or "" inside a schema) prefixes the message."""
        where = f"{where}: " if where else ""
        if not roles:
            raise error(f"{where}{field}: no components; kind {cls.kind!r} needs {list(cls.REQUIRED_ROLES or cls.ROLES[:1])}")
        bad = [r for r in roles if r not in cls.ROLES]
        if bad:
            raise error(f"{where}{field}: {bad} {'is not a role' if len(bad) == 1 else 'are not roles'} of kind {cls.kind!r}; "
                        f"its roles are {list(cls.ROLES)}")
        missing = [r for r in cls.REQUIRED_ROLES if r not in roles]
        if missing:
            raise error(f"{where}{field}: kind {cls.kind!r} needs the component(s) {missing}")

    @classmethod
    def check_inputs(cls, present: Sequence[str], where: str, field: str, error: type[Exception], package: bool = False) -> None:
        """Input keys against the kind's (``package``: a manifest, which must also declare ``PACKAGE_INPUTS``)."""
        where = f"{where}: " if where else ""
        missing = sorted((cls.INPUTS_REQUIRED | (cls.PACKAGE_INPUTS if package else frozenset())) - set(present))
        if missing:
            raise error(f"{where}{field}: kind {cls.kind!r} needs {', '.join(f'{field}.{k}' for k in missing)}")
        extra = sorted(set(present) - cls.INPUTS_ALLOWED)
        if extra:
            raise error(f"{where}{', '.join(f'{field}.{k}' for k in extra)} is not used by kind {cls.kind!r} "
                        f"(it takes {sorted(cls.INPUTS_ALLOWED) or 'no inputs'})")

    @classmethod
    @abstractmethod
    def assemble(cls, modules: dict[str, list[nn.Module]], extras: dict[str, torch.Tensor], *, meta: dict[str, Any],
                 sources: list[str], device: torch.device, error: type[Exception] = GeneratorLoadError) -> "LoadedModel":
        """The loaded model from its built, weight-loaded components (and extra tensors such as codes)."""

    # -- making images ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int | None:
        """How many images :meth:`synthesize` can make (None: any number)."""
        return None

    @abstractmethod
    def synthesize_range(self, start: int, stop: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """Images [start, stop) for ``seed``: (N, C, H, W) float32 in [0, 1]."""

    def synthesize(self, n: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """``n`` images for ``seed``; the same call always gives the same images."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check_capacity(n)
        return self.synthesize_range(0, n, seed, batch_size)

    def check_capacity(self, n: int) -> None:
        cap = self.capacity
        if cap is not None and n > cap:
            raise ValueError(f"this {self.kind} model can make {cap} images, {n} were asked for{self._capacity_hint()}")

    def _capacity_hint(self) -> str:
        return ""

    @abstractmethod
    def reference_images(self, seeds: Sequence[int], n_per_seed: int, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The images a package's reference file holds for ``seeds``, by tensor name (export and verify)."""

    @property
    @abstractmethod
    def modules(self) -> dict[str, list[nn.Module]]:
        """role -> weight sets (more than one: a snapshot ensemble)."""

    def to(self, device: str | torch.device) -> "LoadedModel":
        """Move every component to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for mods in self.modules.values():
            for m in mods:
                m.to(self.device)
        return self

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What generated the images, for the manifest of an output folder (no paths)."""

    def save(self, out_dir: str | Path, n: int | None = None, seed: int = 0, labels: Any = None, fmt: str = "png",
             bit_depth: int = 16, batch_size: int = 64, overwrite: bool = False) -> list[dict]:
        """Write ``n`` images (default: all that ``capacity`` allows, 1000 when unlimited) with a manifest.

        ``out_dir`` must be empty or new; ``overwrite`` replaces what an earlier ``save``/generate wrote there.
        """
        from breastgan.generation.writer import write_images

        count = n if n is not None else (self.capacity if self.capacity is not None else 1000)
        return write_images(self, out_dir, n=count, seed=seed, labels=labels, fmt=fmt, bit_depth=bit_depth, batch_size=batch_size,
                            overwrite=overwrite)


@KINDS.register("noise", summary="noise to image: G(z, labels) from per-index latents; snapshot ensembles")
class LoadedGenerator(LoadedModel):
    """One or more generator weight sets (a snapshot ensemble) behind one ``sample`` call."""

    kind = "noise"
    ROLES = ("generator",)
    REQUIRED_ROLES = ("generator",)
    INPUTS_REQUIRED = frozenset({"latent"})
    INPUTS_ALLOWED = frozenset({"latent"})
    PACKAGE_INPUTS = frozenset({"latent"})
    COMPARED = ("latent_dim", "channels", "image_size", "num_classes")
    CONTRACT = NOISE_CONTRACT
    ENSEMBLE_ROLE = "generator"

    def __init__(self, models: list[nn.Module], meta: dict, sources: list[str], device: torch.device):
        self.models, self.meta, self.sources, self.device = models, meta, sources, device
        self.latent_dim = models[0].latent_dim
        self.num_classes = models[0].num_classes
        self.class_names: list[str] = list(meta.get("class_names") or [])
        self.image_size = tuple(models[0].image_size)
        self.channels = models[0].channels

    @classmethod
    def assemble(cls, modules, extras, *, meta, sources, device, error=GeneratorLoadError) -> "LoadedGenerator":
        return cls(modules["generator"], meta, sources, device)

    @property
    def modules(self) -> dict[str, list[nn.Module]]:
        return {"generator": self.models}

    def _labels(self, labels, start: int, stop: int, drawn: torch.Tensor | None) -> torch.Tensor | None:
        if not self.num_classes:
            if labels is not None:
                raise ValueError("this generator is unconditional: do not pass labels")
            return None
        if labels is None:
            return drawn
        if isinstance(labels, (int, str)):
            labels = [labels] * (stop - start)
        else:
            labels = list(labels)[start:stop] if len(labels) > stop - start else list(labels)
        out = []
        for lab in labels:
            if isinstance(lab, str):
                if lab not in self.class_names:
                    raise ValueError(f"unknown label {lab!r}; this generator knows {self.class_names}")
                lab = self.class_names.index(lab)
            if not 0 <= int(lab) < self.num_classes:
                raise ValueError(f"label {lab} out of range 0..{self.num_classes - 1}")
            out.append(int(lab))
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def sample_range(self, start: int, stop: int, seed: int = 0, labels=None, batch_size: int = 64) -> torch.Tensor:
        """Images with global indices [start, stop) for ``seed``; (N, C, H, W) float32 in [0, 1]."""
        chunks = []
        for a in range(start, stop, batch_size):
            b = min(stop, a + batch_size)
            z, drawn = latents_for(a, b, self.latent_dim, seed, self.num_classes)
            y = self._labels(labels, a - start, b - start, drawn) if labels is not None else self._labels(None, a, b, drawn)
            out = torch.empty(b - a, self.channels, *self.image_size)
            owner = torch.arange(a, b) % len(self.models)  # snapshot ensemble: image i from snapshot i mod S
            for k, model in enumerate(self.models):
                sel = (owner == k).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                yy = y[sel].to(self.device) if y is not None else None
                img = model(z[sel].to(self.device), yy).float()
                out[sel] = ((img.clamp(-1, 1) + 1) / 2).cpu()
            chunks.append(out)
        return torch.cat(chunks)

    def sample(self, n: int, seed: int = 0, labels=None, batch_size: int = 64) -> torch.Tensor:
        """``n`` images for ``seed`` (the same seed always gives the same images).

        ``labels``: None (drawn uniformly for conditional models), one label (index or class name)
        for all, or a sequence of n labels.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self.sample_range(0, n, seed, labels, batch_size)

    def synthesize_range(self, start: int, stop: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        return self.sample_range(start, stop, seed, None, batch_size)

    def reference_images(self, seeds, n_per_seed, image_size):
        return {f"seed_{s}": self.sample(n_per_seed, seed=s) for s in seeds}

    def describe(self) -> dict[str, Any]:
        return {"arch": self.meta.get("arch"), "args": self.meta.get("args")}


def _as_images(images: Any, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what}: expected an (N, C, H, W) tensor of images in [0, 1], got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: no images (shape {tuple(images.shape)})")
    x = images.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: images hold NaN/Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{what}: pixel values must lie in [0, 1] (got {lo:.4g}..{hi:.4g}); map [-1, 1] images with (x + 1) / 2")
    return x.clamp(0, 1)


@KINDS.register("translation", summary="image to image: translators a2b and/or b2a, same shape in and out")
class LoadedTranslator(LoadedModel):
    """Image-to-image translators by direction ('a2b', 'b2a'); ``bind`` input images to ``synthesize``."""

    kind = "translation"
    ROLES = ("a2b", "b2a")
    INPUTS_ALLOWED = frozenset({"image"})
    PACKAGE_INPUTS = frozenset({"image"})
    COMPARED = ("channels", "size_multiple")
    CONTRACT = ("channels",)
    TRANSLATOR = True

    def __init__(self, translators: dict[str, nn.Module], meta: dict, sources: list[str], device: torch.device,
                 bound: tuple[torch.Tensor, tuple[str, ...]] | None = None):
        if not translators:
            raise GeneratorLoadError("a translation model needs at least one translator ('a2b' or 'b2a')")
        self.translators = dict(sorted(translators.items()))
        channels = {d: int(t.channels) for d, t in self.translators.items()}
        if len(set(channels.values())) > 1:
            raise GeneratorLoadError(f"translators disagree on the channel count {channels}; all directions map images of one shape")
        self.channels = next(iter(channels.values()))
        self.size_multiple = math.lcm(*(int(getattr(t, "size_multiple", 1)) for t in self.translators.values()))
        self.meta, self.sources, self.device = meta, sources, device
        self._bound = bound

    @classmethod
    def assemble(cls, modules, extras, *, meta, sources, device, error=GeneratorLoadError) -> "LoadedTranslator":
        for role, mods in modules.items():
            if len(mods) != 1:
                raise error(f"translation component {role!r}: one weight set expected, got {len(mods)}")
        return cls({role: mods[0] for role, mods in modules.items()}, meta, sources, device)

    @property
    def modules(self) -> dict[str, list[nn.Module]]:
        return {d: [t] for d, t in self.translators.items()}

    @property
    def directions(self) -> list[str]:
        return list(self.translators)

    def _arch(self, direction: str) -> str:
        return str((self.meta.get("components") or {}).get(direction, {}).get("arch", "?"))

    def check_direction(self, direction: str) -> None:
        if direction not in self.translators:
            raise ValueError(f"unknown direction {direction!r}; this translator has {self.directions}")

    def check_images(self, images: Any, what: str) -> torch.Tensor:
        x = _as_images(images, what)
        n, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"{what}: the translator takes {self.channels}-channel images, got {c} channel(s) (shape {tuple(x.shape)})")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"{what}: image sides must be multiples of {m} for this architecture, got {h}x{w}")
        return x

    @torch.no_grad()
    def translate(self, images01: torch.Tensor, direction: str, batch_size: int = 64) -> torch.Tensor:
        """Translate (N, C, H, W) images in [0, 1] along ``direction``; returns the same shape, float32 in [0, 1]."""
        self.check_direction(direction)
        x = self.check_images(images01, f"translate({direction!r})")
        model = self.translators[direction]
        out = torch.empty_like(x)
        for a in range(0, x.shape[0], batch_size):
            xb = x[a : a + batch_size].to(self.device) * 2 - 1
            y = model(xb)
            if tuple(y.shape) != tuple(xb.shape):
                raise ValueError(f"translator {direction!r} ({self._arch(direction)}) returned shape {tuple(y.shape)} for input "
                                 f"{tuple(xb.shape)}; a translator must keep the shape")
            out[a : a + xb.shape[0]] = ((y.float().clamp(-1, 1) + 1) / 2).cpu()
        return out

    def bind(self, images01: torch.Tensor, direction: str | Sequence[str] | None = None) -> "LoadedTranslator":
        """A translator whose ``synthesize`` makes the translations of ``images01``.

        ``direction``: one direction, several, or None for every direction the model has; image i of
        the synthesized set is input ``i mod N`` translated along direction ``i // N``.
        """
        dirs = list(self.directions if direction is None else ([direction] if isinstance(direction, str) else direction))
        if not dirs:
            raise ValueError(f"bind: give at least one direction of {self.directions}")
        for d in dirs:
            self.check_direction(d)
        x = self.check_images(images01, "bind")
        return LoadedTranslator(self.translators, self.meta, self.sources, self.device, bound=(x, tuple(dirs)))

    @property
    def capacity(self) -> int:
        if self._bound is None:
            return 0
        return self._bound[0].shape[0] * len(self._bound[1])

    def _capacity_hint(self) -> str:
        if self._bound is None:
            return ": a translation model makes images from input images; bind them first (gen.bind(images, direction))"
        x, dirs = self._bound
        return f" ({x.shape[0]} bound input images x {len(dirs)} direction(s))"

    def synthesize_range(self, start: int, stop: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """Translations of the bound images [start, stop) (deterministic: ``seed`` does not change them)."""
        if self._bound is None or not 0 <= start < stop <= self.capacity:
            if self._bound is None:
                raise ValueError("this translation model makes images from input images: bind them first (gen.bind(images, direction)) "
                                 "or call gen.translate(images, direction)")
            raise ValueError(f"images [{start}, {stop}) requested; the bound set has {self.capacity}{self._capacity_hint()}")
        x, dirs = self._bound
        n = x.shape[0]
        out, i = [], start
        while i < stop:
            k, j = divmod(i, n)
            end = min(stop, (k + 1) * n)
            out.append(self.translate(x[j : j + (end - i)], dirs[k], batch_size))
            i = end
        return torch.cat(out)

    def reference_images(self, seeds, n_per_seed, image_size):
        out = {}
        h, w = image_size
        for s in seeds:
            inputs = synthetic_images(0, n_per_seed, self.channels, h, w, seed=s)
            for d in self.directions:
                out[f"seed_{s}_{d}"] = self.translate(inputs, d)
        return out

    def describe(self) -> dict[str, Any]:
        comps = self.meta.get("components") or {}
        out: dict[str, Any] = {"kind": self.kind, "components": {d: {"arch": comps.get(d, {}).get("arch"), "args": comps.get(d, {}).get("args")}
                                                                 for d in self.directions}}
        if self._bound is not None:
            out["bound"] = {"inputs": int(self._bound[0].shape[0]), "directions": list(self._bound[1])}
        return out


@KINDS.register("inversion", summary="latent codes fitted to images, rendered by a noise-to-image generator")
class LoadedInversion(LoadedModel):
    """A noise-to-image generator plus a stored tensor of latent codes fitted to images (``reconstruct``)."""

    kind = "inversion"
    ROLES = ("generator",)
    REQUIRED_ROLES = ("generator",)
    INPUTS_REQUIRED = frozenset({"codes"})
    INPUTS_ALLOWED = frozenset({"latent", "codes"})
    PACKAGE_INPUTS = frozenset({"latent", "codes"})
    COMPARED = ("latent_dim", "channels", "image_size", "num_classes")
    CONTRACT = NOISE_CONTRACT

    def __init__(self, generator: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None, meta: dict, sources: list[str],
                 device: torch.device, error: type[Exception] = GeneratorLoadError):
        where = str(meta.get("codes_source", "codes"))
        d = int(generator.latent_dim)
        if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] != d:
            raise error(f"{where}: codes must be a (count, {d}) tensor for a generator with latent_dim {d}, got {tuple(codes.shape)}")
        if not codes.is_floating_point() or not torch.isfinite(codes).all():
            raise error(f"{where}: codes must be finite floats")
        k, nc = int(codes.shape[0]), int(generator.num_classes)
        if nc:
            if labels is None or labels.shape != (k,) or labels.dtype != torch.long:
                raise error(f"{where}: a conditional generator needs 'labels', an int64 tensor of shape ({k},), one per code")
            if int(labels.min()) < 0 or int(labels.max()) >= nc:
                raise error(f"{where}: labels must lie in 0..{nc - 1}, got {int(labels.min())}..{int(labels.max())}")
        elif labels is not None:
            raise error(f"{where}: the generator is unconditional; codes carry no 'labels'")
        self.generator = generator
        self.models = [generator]  # the white-box view (privacy audit) of the rendering network
        self.codes = codes.detach().float().cpu().contiguous()
        self.code_labels = labels.detach().cpu().contiguous() if labels is not None else None
        self.meta, self.sources, self.device = meta, sources, device
        self.latent_dim, self.num_classes = d, nc
        self.channels, self.image_size = int(generator.channels), tuple(generator.image_size)
        self.class_names: list[str] = list(meta.get("class_names") or [])

    @classmethod
    def assemble(cls, modules, extras, *, meta, sources, device, error=GeneratorLoadError) -> "LoadedInversion":
        if len(modules["generator"]) != 1:
            raise error(f"inversion: one generator weight set expected, got {len(modules['generator'])}")
        if "codes" not in extras:
            raise error(f"{meta.get('codes_source', 'codes')}: no tensor 'codes'")
        return cls(modules["generator"][0], extras["codes"], extras.get("labels"), meta, sources, device, error)

    @property
    def modules(self) -> dict[str, list[nn.Module]]:
        return {"generator": [self.generator]}

    @property
    def count(self) -> int:
        return int(self.codes.shape[0])

    @property
    def capacity(self) -> int:
        return self.count

    @torch.no_grad()
    def reconstruct(self, indices: Sequence[int] | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Render the codes at ``indices``: (len, C, H, W) float32 in [0, 1]."""
        idx = torch.as_tensor(indices if isinstance(indices, torch.Tensor) else list(indices), dtype=torch.long).flatten()
        if idx.numel() == 0:
            raise ValueError("reconstruct: no indices given")
        if int(idx.min()) < 0 or int(idx.max()) >= self.count:
            raise ValueError(f"reconstruct: code index out of range 0..{self.count - 1} (got {int(idx.min())}..{int(idx.max())})")
        out = torch.empty(idx.numel(), self.channels, *self.image_size)
        for a in range(0, idx.numel(), batch_size):
            sel = idx[a : a + batch_size]
            y = self.code_labels[sel].to(self.device) if self.code_labels is not None else None
            img = self.generator(self.codes[sel].to(self.device), y).float()
            out[a : a + sel.numel()] = ((img.clamp(-1, 1) + 1) / 2).cpu()
        return out

    def synthesize_range(self, start: int, stop: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """Reconstructions of codes [start, stop) (deterministic: ``seed`` does not change them)."""
        if not 0 <= start < stop <= self.count:
            raise ValueError(f"images [{start}, {stop}) requested; this inversion holds {self.count} codes")
        return self.reconstruct(range(start, stop), batch_size)

    def reference_images(self, seeds, n_per_seed, image_size):
        return {f"seed_{s}": self.synthesize(n_per_seed, seed=s) for s in seeds}

    def code_tensors(self) -> dict[str, torch.Tensor]:
        """The codes file's tensors (what :func:`codes_template` describes)."""
        out = {"codes": self.codes.contiguous()}
        if self.code_labels is not None:
            out["labels"] = self.code_labels.contiguous()
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.meta.get("arch"), "args": self.meta.get("args"), "codes": self.count}
