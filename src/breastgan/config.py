"""Run configuration: YAML validated by pydantic, with errors that name the key and what is allowed.

Components chosen by name (recipe, dataset, generator, discriminator, loss, loss terms, metrics) take their
options inline next to the name (``generator: {arch: dcgan, latent_dim: 100}``); the options are
validated against the registered component's own argument model, so an unknown key or a bad value
is reported as ``model.generator.latent_dim: ...`` before anything is built.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from breastgan.registry import ConfigArgumentError, Registry, RegistryError


class ConfigError(ValueError):
    """A configuration problem, phrased for the person editing the YAML file."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _ComponentBase(BaseModel):
    """``{<key>: name, **options}``; options are validated against the registered component."""

    model_config = ConfigDict(extra="allow")
    _key: ClassVar[str]
    _registry: ClassVar[Any]

    @model_validator(mode="after")
    def _check(self) -> "_ComponentBase":
        registry: Registry = type(self)._registry()
        try:
            entry = registry.entry(self.component)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        try:
            entry.validate_args(self.args)
        except ConfigArgumentError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def component(self) -> str:
        """The registered name this spec selects."""
        return getattr(self, type(self)._key)

    @property
    def args(self) -> dict[str, Any]:
        """The component's options (everything but the selecting key)."""
        return dict(self.model_extra or {})

    def validated_args(self) -> BaseModel:
        return type(self)._registry().entry(self.component).validate_args(self.args)


def _component(registry_getter, key: str, model_name: str):
    model = create_model(model_name, __base__=_ComponentBase, **{key: (str, ...)})
    model._key = key
    model._registry = staticmethod(registry_getter)
    return model


def _registry(kind: str):
    def get() -> Registry:
        from breastgan.components import registry

        return registry(kind)

    return get


DatasetSpec = _component(_registry("dataset"), "dataset", "DatasetSpec")
GeneratorSpec = _component(_registry("generator"), "arch", "GeneratorSpec")
DiscriminatorSpec = _component(_registry("discriminator"), "arch", "DiscriminatorSpec")
RecipeSpec = _component(_registry("recipe"), "name", "RecipeSpec")


class TermSpec(_component(_registry("loss term"), "term", "TermSpecBase")):  # type: ignore[misc]
    """``{term: drift, weight: 0.001}``: a named, weighted extra loss term (losses/terms.py)."""


class LossSpec(_component(_registry("loss"), "name", "LossSpecBase")):  # type: ignore[misc]
    model_config = ConfigDict(extra="allow")
    terms: list[TermSpec] = Field(default_factory=list, description="extra loss terms, each logged on its own")

    @property
    def args(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items()}


# keys of an in-training evaluation entry that belong to the evaluation, not to the metric
EVAL_KEYS = ("metric", "every", "n", "seed", "extractor", "cache_dir", "sample_batch", "n_boot", "options")


class EvalSpec(Strict):
    """``{metric: kid, every: 500, n: 500, <metric options>}``: any registered evaluation metric during training.

    Synthetic images come from the recipe's ``synthesize`` (EMA modules), real ones from a fixed
    seeded subset of the recipe's reference data. Options the metric's own model defines (e.g. KID's
    ``subsets``) may be given inline or under ``options``.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    metric: str
    every: int = Field(500, ge=1, description="evaluate every this many steps")
    n: int = Field(256, ge=2, description="synthetic images per evaluation, and real images (at most) in the fixed subset")
    seed: int = Field(12345, description="sampling seed and real-subset seed: fixed, so successive values differ by the model only")
    extractor: Any = Field("inception-fid", description="feature extractor for feature metrics (name or spec dict)")
    cache_dir: str | None = Field(None, description="real-feature cache; default $BREASTGAN_CACHE or ~/.cache/breastgan")
    sample_batch: int = Field(64, ge=1, description="images synthesised per call")
    n_boot: int = Field(0, ge=0, description="bootstrap replicates for intervals (0: none, the cheap default during training)")
    options: dict[str, Any] = Field(default_factory=dict, description="the metric's own options (also accepted inline)")

    @model_validator(mode="after")
    def _metric(self) -> "EvalSpec":
        from breastgan.components import registry

        try:
            entry = registry("metric").entry(self.metric)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        try:
            entry.validate_args(self.metric_options())
        except ConfigArgumentError as exc:
            raise ValueError(str(exc)) from None
        return self

    def metric_options(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), **self.options}


class DataConfig(Strict):
    source: DatasetSpec = Field(default_factory=lambda: DatasetSpec(dataset="phantom"))  # type: ignore[call-arg]
    hflip: bool = Field(True, description="random horizontal flip of real images, p = 0.5 (the sharing study's recipe)")
    vflip: bool = Field(True, description="random vertical flip of real images, p = 0.5")
    conditional: bool = Field(False, description="feed class labels to G and D (conditional GAN)")


class ModelConfig(Strict):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(arch="dcgan"))  # type: ignore[call-arg]
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(arch="dcgan"))  # type: ignore[call-arg]


class OptimConfig(Strict):
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    betas: tuple[float, float] = (0.5, 0.999)

    @model_validator(mode="after")
    def _betas(self) -> "OptimConfig":
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both lie in [0, 1), got {self.betas}")
        return self


class AugmentConfig(Strict):
    policy: Literal["none", "diffaugment"] = Field("none", description="differentiable augmentation of real AND fake D inputs")
    ops: list[Literal["color", "translation", "cutout"]] = Field(default_factory=lambda: ["translation", "cutout"])
    translation: float = Field(0.125, ge=0, le=0.5, description="max shift as a fraction of the image size")
    cutout: float = Field(0.5, gt=0, le=1, description="cutout square side as a fraction of the image size")


class EMAConfig(Strict):
    decay: float = Field(0.999, ge=0, lt=1, description="0 disables EMA (the EMA copy then equals G)")
    start_step: int = Field(0, ge=0, description="copy G into the EMA until this step")


class DPConfig(Strict):
    """DP-SGD on the discriminator (breastgan.training.dp); epsilon is accounted per patient."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0, le=100, description="Gaussian noise std / max_grad_norm")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping bound")
    delta: float | None = Field(None, gt=0, lt=1, description="must be below 1 / number of patients; default 1 / (10 x patients)")
    sample_rate: float | None = Field(None, gt=0, le=1, description="Poisson rate per patient; default batch_size / patients")
    unit: Literal["auto", "patient", "image"] = Field("auto", description="privacy unit: patient when the data has patient ids")
    accountant: Literal["rdp", "prv"] = "rdp"


class TrainConfig(Strict):
    seed: int = 0
    batch_size: int = Field(16, ge=1, description="per-process batch; effective batch = batch_size x world size")
    epochs: int | None = Field(None, ge=1, description="stop after this many passes over the data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many generator steps")
    n_critic: int = Field(1, ge=1, le=100, description="discriminator/critic updates per generator update")
    ema: EMAConfig = Field(default_factory=EMAConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype on CUDA; CPU runs always use fp32")
    channels_last: bool = Field(False, description="channels-last memory format (helps on CUDA)")
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm across processes (distributed runs)")
    deterministic: bool = Field(True, description="torch deterministic algorithms (bit-exact resume on CPU)")
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(200, ge=1, description="write a fixed-noise sample grid every this many steps")
    grid_size: int = Field(64, ge=1, le=1024)
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1, description="keep this many most recent checkpoints (plus the best)")
    snapshot_every_epochs: int | None = Field(None, ge=1, description="save EMA generator weights every K epochs")
    snapshot_start_epoch: int = Field(0, ge=0)
    eval: list[EvalSpec] = Field(default_factory=list, description="evaluation metrics computed during training (any registered metric)")
    best_metric: str | None = Field(None, description="'<metric>' or '<metric>/<result>' (e.g. kid, pixel_stats/spectrum_l1) that selects the best checkpoint")
    nonfinite: Literal["stop", "rollback"] = Field("stop", description="on NaN/Inf: stop, or roll back to the last good checkpoint")
    max_rollbacks: int = Field(3, ge=0)
    monitor_window: int = Field(200, ge=1, description="steps with D winning outright before a warning")
    progress: bool = Field(True, description="rich progress bar on the terminal")
    dp: DPConfig = Field(default_factory=DPConfig)

    @model_validator(mode="after")
    def _length(self) -> "TrainConfig":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("train: set train.epochs or train.max_steps (how long to train)")
        if self.best_metric is not None:
            names = {e.metric for e in self.eval}
            cb = self.best_metric.split("/")[0]
            if cb not in names:
                raise ValueError(
                    f"train.best_metric {self.best_metric!r} names metric {cb!r}, which is not in train.eval "
                    f"(configured: {sorted(names) or 'none'})"
                )
        return self


class RunConfig(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")
    output_dir: str = "runs"
    recipe: RecipeSpec = Field(default_factory=lambda: RecipeSpec(name="gan"), description="what is trained and how a step goes (breastgan models)")  # type: ignore[call-arg]
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossSpec = Field(default_factory=lambda: LossSpec(name="nonsaturating"))  # type: ignore[call-arg]
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))

    @model_validator(mode="before")
    @classmethod
    def _recipe_default_loss(cls, data: Any) -> Any:
        """A recipe may name its own default adversarial loss (CycleGAN/pix2pix: least squares).

        Filled in before validation, so the saved config states it and a resumed run keeps it."""
        if not isinstance(data, dict) or "loss" in data:
            return data
        recipe = data.get("recipe") or {}
        name = recipe.get("name", "gan") if isinstance(recipe, dict) else getattr(recipe, "component", "gan")
        from breastgan.components import registry

        try:
            default = getattr(registry("recipe").entry(name).obj, "default_loss", None)
        except RegistryError:
            return data  # the recipe field reports the unknown name
        return {**data, "loss": {"name": default}} if default else data

    @model_validator(mode="after")
    def _combination(self) -> "RunConfig":
        from breastgan.components import registry

        loss_entry = registry("loss").entry(self.loss.name)
        d_args = self.model.discriminator.args
        if getattr(loss_entry.obj, "uses_gradient_penalty", False) and d_args.get("norm", "batch") == "batch" and self.model.discriminator.component == "dcgan":
            raise ValueError(
                "model.discriminator.norm: batch norm is invalid with a gradient penalty (the penalty is per-sample); "
                "use norm: layer | instance | none, or arch: wgan_gp_critic"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration{f' in {source}' if source else ''}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(RunConfig, err["loc"][:-1])
            if parent is not None:
                msg += f"; allowed keys here: {', '.join(sorted(parent.model_fields))}"
        elif err["type"] not in ("value_error", "assertion_error"):
            msg += f" (got {err.get('input')!r})"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section (it holds {child!r})")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML scalars/lists."""
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. train.max_steps=200)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from None
        set_dotted(tree, key.strip(), value)
    return tree


def expand_env(obj: Any) -> Any:
    """Expand ``$VAR`` / ``${VAR}`` in every string of a YAML tree (paths like ``$BREASTGAN_DATA/busi``)."""
    if isinstance(obj, str):
        return os.path.expandvars(obj)
    if isinstance(obj, dict):
        return {k: expand_env(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_env(v) for v in obj]
    return obj


def read_yaml_mapping(source: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); errors name the file and the problem."""
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    return tree


def load_config(source: str | Path | dict[str, Any] | RunConfig | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a run configuration from a YAML path, a dict, or defaults."""
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        source = source.model_dump(mode="json")
    where = ""
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, dict):
        tree = source
    else:
        where = str(source)
        tree = read_yaml_mapping(source, "config file")
    tree = apply_overrides(tree, overrides)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, where)) from None
