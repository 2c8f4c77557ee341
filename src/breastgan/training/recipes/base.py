"""The recipe contract: what is trained and how one step goes. The loop (training/trainer.py) does the rest.

A recipe is registered in :data:`RECIPES` and selected by ``recipe: {name: ..., **options}`` in a
run configuration (default ``gan``). It declares, and the loop then owns:

- ``build_modules()``: its named networks (``generator``, ``discriminator`` or ``g_ab``, ``g_ba``,
  ``d_a``, ``d_b``, ...), built in a fixed order (the loop seeds torch first, so initial weights are
  reproducible and identical on every rank). The loop moves them to the device, checkpoints them as
  ``<name>.safetensors``, keeps an EMA copy of those in ``ema_modules`` and wraps those in
  ``ddp_modules`` in DistributedDataParallel.
- ``optimizers()``: :class:`OptimizerSpec` per name, over named modules; the loop hands them the
  *trainable* parameters only, so a frozen pretrained branch never reaches an optimiser.
- ``schedulers()``: :class:`SchedulerSpec` per name; the loop steps them after every completed step.
- ``streams()``: the data it needs (:class:`StreamSpec`); the loop builds each stream's epoch plan,
  keeps its position and restores it on resume.
- ``train_step(env)``: one iteration (all its phases: discriminator updates, generator update,
  regularisers), through the :class:`~breastgan.training.env.StepEnv`; returns a :class:`StepOutput`.
- ``structure()`` / ``set_structure()`` / ``next_structure()``: optional state that decides the
  shape of the modules (e.g. a progressive stage). On resume the loop restores it *before* building
  modules; when ``next_structure`` returns a new one, the loop rebuilds modules, optimisers, EMA
  copies and DDP wrappers, carrying over every tensor whose name and shape survive.
- ``state_dict()`` / ``load_state_dict()``: extra state (counters, image pools, accountants).
- ``synthesize(modules, n, seed)``: images in [0, 1] for sample grids and in-training evaluation.
- ``model_file(...)``: what the run generates (kind and components) for generation and sharing.

A recipe never writes files, touches ranks or handles signals: all of that is the loop's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from breastgan.registry import Registry

if TYPE_CHECKING:
    from breastgan.config import RunConfig
    from breastgan.data.base import ImageDataset
    from breastgan.run_dir import ModelFile
    from breastgan.training.env import StepEnv

RECIPES: Registry[Any] = Registry("recipe")


class RecipeArgs(BaseModel):
    """Base of recipe option models (``recipe: {name: ..., <options>}``)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser over the trainable parameters of ``modules`` (in that order)."""

    modules: tuple[str, ...]
    factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class SchedulerSpec:
    """A learning-rate scheduler of optimiser ``optimizer``, stepped by the loop after every completed step."""

    optimizer: str
    factory: Callable[[torch.optim.Optimizer], Any]


@dataclass(frozen=True)
class StreamSpec:
    """A data stream: a dataset and how its batches are split over ranks.

    ``sharding='global'``: every rank draws from one permutation at the global batch size and takes
    its slice (2 ranks x b see what 1 rank x 2b sees). ``'per_rank'``: each rank iterates its own
    dataset (e.g. its site's shard) with its own permutation, at its own batch size.
    """

    dataset: "ImageDataset"
    batch_size: int
    sharding: Literal["global", "per_rank"] = "global"
    shuffle: bool = True


@dataclass
class StepOutput:
    """What one iteration did: scalars to log (averaged over ranks by the loop) and whether it completed a step.

    ``completed_step``: a training *step* (the unit of ``train.max_steps``, checkpoints and logging;
    for GANs one generator update) ended in this iteration; the loop then updates EMA copies and
    schedulers and counts it.
    """

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    completed_step: bool = True


class Recipe(ABC):
    """Base class of registered recipes; see the module docstring for the contract."""

    #: the generation kind of what this recipe trains (generation.kinds: noise | translation | inversion)
    kind: str = "noise"

    def __init__(self, cfg: "RunConfig", args: BaseModel, env: "StepEnv"):
        self.cfg, self.args, self.env = cfg, args, env

    # -- what is trained -------------------------------------------------------------------------
    @abstractmethod
    def build_modules(self) -> dict[str, nn.Module]: ...

    def ema_modules(self) -> dict[str, float]:
        """Module name -> EMA decay, for modules that get an averaged copy."""
        return {}

    def ddp_modules(self) -> list[str]:
        """Modules whose gradients are all-reduced (DDP-wrapped) in distributed runs."""
        return []

    @abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]: ...

    def schedulers(self) -> dict[str, SchedulerSpec]:
        return {}

    @abstractmethod
    def streams(self) -> dict[str, StreamSpec]:
        """Data streams by name; the first is the primary stream: its passes are the run's epochs."""

    # -- one iteration ---------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, env: "StepEnv") -> StepOutput: ...

    # -- structure (modules that change shape) ---------------------------------------------------
    def structure(self) -> dict[str, Any]:
        return {}

    def set_structure(self, structure: dict[str, Any]) -> None:
        if structure:
            raise ValueError(f"recipe {type(self).__name__} has no structure state, got {structure}")

    def next_structure(self, step: int) -> dict[str, Any] | None:
        """A new structure to switch to after ``step`` completed steps, or None to keep the current one."""
        return None

    def batch_size(self) -> int:
        """Per-rank batch of the primary stream under the current structure (ProGAN shrinks it as it grows)."""
        return self.cfg.train.batch_size

    # -- extra state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"recipe {type(self).__name__} keeps no state, but the checkpoint has {sorted(state)}")

    def on_restore(self, records: dict[str, Any]) -> None:
        """Called after the loop restored modules, optimisers and state; ``records``: the files of
        :meth:`record_names` as they were on disk, plus ``__checkpoint__`` (the checkpoint's path)."""

    def on_built(self, env: "StepEnv") -> None:
        """Called after the loop built modules, optimisers and DDP wrappers (initially and after a structure change)."""

    def on_finish(self) -> None:
        """Called once when the loop stops, normally or not (e.g. to release remote peers)."""

    def records(self, force: bool = False) -> dict[str, Any]:
        """Small JSON records the loop writes now to ``<run>/<name>`` (rank 0), e.g. a privacy ledger;
        ``force`` at checkpoints. Default: none."""
        return {}

    def record_names(self) -> list[str]:
        """The record files to read back and pass to :meth:`on_restore`."""
        return []

    # -- outputs ---------------------------------------------------------------------------------
    @abstractmethod
    def synthesize(self, modules: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        """``n`` images, (n, C, H, W) float32 in [0, 1] on the CPU, from ``modules`` (the EMA copies where kept)."""

    def preview(self, modules: dict[str, nn.Module]) -> torch.Tensor:
        """The fixed images of the sample grid (default: ``synthesize`` with a fixed seed)."""
        return self.synthesize(modules, self.cfg.train.grid_size, self.cfg.train.seed + 7919)

    def eval_reference(self) -> "ImageDataset":
        """Real images that in-training metrics compare ``synthesize`` against (default: the primary stream)."""
        return next(iter(self.streams().values())).dataset

    @abstractmethod
    def model_file(self, arch_args: dict[str, tuple[str, dict[str, Any]]]) -> "ModelFile":
        """What the run generates; ``arch_args``: module name -> (registry key, validated args)."""

    def summary(self) -> dict[str, Any]:
        """Extra fields for summary.json (e.g. a privacy guarantee)."""
        return {}

    def arch_args(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Module name -> (architecture key, validated args), recorded in run.json and the model file."""
        return {}


@torch.no_grad()
def render_in_eval(G: nn.Module, inputs: torch.Tensor, device: torch.device | str, batch: int = 16) -> torch.Tensor:
    """``G`` on ``inputs`` (model range) in eval mode, ``batch`` at a time: (n, C, H, W) float32 in [0, 1] on the CPU.

    Eval mode because the sample grid and in-training metrics must not see training-only behaviour (pix2pix /
    dm-GAN dropout, batch statistics); ``G``'s own mode is restored afterwards.
    """
    was = G.training
    G.eval()
    try:
        return torch.cat([((G(inputs[i : i + batch].to(device)).float().clamp(-1, 1) + 1) / 2).cpu() for i in range(0, inputs.shape[0], batch)])
    finally:
        G.train(was)


class GeneratorDiscriminatorPair:
    """Declarations shared by recipes that train one ``generator`` against one ``discriminator``:
    an EMA copy of the generator (``train.ema.decay``), both DDP-wrapped, one Adam each
    (``optim.lr_g`` / ``lr_d``, ``optim.betas``). Mix in before :class:`Recipe`."""

    cfg: Any

    def ema_modules(self) -> dict[str, float]:
        return {"generator": self.cfg.train.ema.decay}

    def ddp_modules(self) -> list[str]:
        return ["generator", "discriminator"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        o = self.cfg.optim

        def adam(lr: float):
            return lambda params: torch.optim.Adam(params, lr=lr, betas=o.betas)

        return {"generator": OptimizerSpec(("generator",), adam(o.lr_g)), "discriminator": OptimizerSpec(("discriminator",), adam(o.lr_d))}
