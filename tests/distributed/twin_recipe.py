"""A test recipe that exercises every part of the recipe contract the GAN recipe does not.

``test_twin``: two generators (g_a, g_b), two discriminators (d_a, d_b), three optimisers (one over
both generators), a learning-rate scheduler, two data streams of different lengths, extra state
that changes the weights (a running loss average scales the D loss), and a structure change at
step ``grow_at``: g_a and d_a grow a layer and the per-rank batch halves. Test knobs: ``nan_rank`` /
``nan_iteration`` make one rank's discriminator loss NaN once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from breastgan.data.base import build_dataset
from breastgan.models.registry import GENERATORS, GeneratorBase
from breastgan.run_dir import ComponentSpec, ModelFile
from breastgan.training.recipes import RECIPES, OptimizerSpec, Recipe, RecipeArgs, SchedulerSpec, StepOutput, StreamSpec

LATENT = 8


class TinyG(GeneratorBase):
    def __init__(self, image_size: int = 32, channels: int = 1, latent_dim: int = LATENT, grown: bool = False):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels, self.image_size = latent_dim, 0, channels, (image_size, image_size)
        self.fc = nn.Linear(latent_dim, 4 * 8 * 8)
        self.up = nn.ConvTranspose2d(4, 4, 4, 4)
        self.out = nn.Conv2d(4, channels, 3, padding=1)
        self.refine = nn.Conv2d(4, 4, 3, padding=1) if grown else None

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.up(self.fc(z).view(-1, 4, 8, 8)), 0.2)
        if self.refine is not None:
            h = h + F.leaky_relu(self.refine(h), 0.2)
        return torch.tanh(self.out(h))


class TinyD(nn.Module):
    def __init__(self, grown: bool = False):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 4, 4)
        self.b = nn.Conv2d(4, 4, 3, padding=1) if grown else None
        self.head = nn.Linear(4 * 8 * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.a(x), 0.2)
        if self.b is not None:
            h = h + F.leaky_relu(self.b(h), 0.2)
        return self.head(h.flatten(1)).flatten()


if "test_twin_g" not in GENERATORS:
    from pydantic import BaseModel, ConfigDict

    class TinyGArgs(BaseModel):
        model_config = ConfigDict(extra="forbid")
        image_size: int = 32
        channels: int = 1
        latent_dim: int = LATENT
        grown: bool = False

    GENERATORS.register("test_twin_g", args=TinyGArgs, summary="test-only tiny generator")(TinyG)


class TwinArgs(RecipeArgs):
    grow_at: int = Field(4, ge=1)
    second_stream_n: int = 48
    nan_rank: int = -1
    nan_iteration: int = -1
    pause_s: float = Field(0.0, ge=0, description="sleep per step, so a test can kill the run between checkpoints")


@RECIPES.register("test_twin", args=TwinArgs, summary="test-only: 2 G, 2 D, scheduler, extra state, structure change")
class TwinRecipe(Recipe):
    def __init__(self, cfg, args, env):
        super().__init__(cfg, args, env)
        self.data_a = build_dataset(cfg.data.source.component, cfg.data.source.args)
        self.data_b = build_dataset(cfg.data.source.component, {**cfg.data.source.args, "n": args.second_stream_n})
        self.stage = 0
        self.running = torch.zeros(())  # extra state that changes the weights
        self._injected = False  # not state: a roll-back must not re-arm the NaN

    def build_modules(self) -> dict[str, nn.Module]:
        grown = self.stage >= 1
        return {"g_a": TinyG(grown=grown), "g_b": TinyG(), "d_a": TinyD(grown=grown), "d_b": TinyD()}

    def arch_args(self):
        return {"g_a": ("test_twin_g", {"image_size": 32, "channels": 1, "latent_dim": LATENT, "grown": self.stage >= 1})}

    def ema_modules(self) -> dict[str, float]:
        return {"g_a": 0.5, "g_b": 0.5}

    def ddp_modules(self) -> list[str]:
        return ["g_a", "g_b", "d_a", "d_b"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        adam = lambda lr: (lambda params: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9)))  # noqa: E731
        return {"g": OptimizerSpec(("g_a", "g_b"), adam(2e-3)), "d_a": OptimizerSpec(("d_a",), adam(2e-3)), "d_b": OptimizerSpec(("d_b",), adam(1e-3))}

    def schedulers(self) -> dict[str, SchedulerSpec]:
        return {"g": SchedulerSpec("g", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7))}

    def streams(self) -> dict[str, StreamSpec]:
        return {"a": StreamSpec(self.data_a, self.batch_size()), "b": StreamSpec(self.data_b, self.cfg.train.batch_size)}

    def batch_size(self) -> int:
        return self.cfg.train.batch_size if self.stage == 0 else self.cfg.train.batch_size // 2

    def structure(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def set_structure(self, structure: dict[str, Any]) -> None:
        self.stage = int(structure.get("stage", 0))

    def next_structure(self, step: int) -> dict[str, Any] | None:
        return {"stage": 1} if step >= self.args.grow_at and self.stage == 0 else None

    def train_step(self, env) -> StepOutput:
        if self.args.pause_s:
            import time

            time.sleep(self.args.pause_s)
        B = env.global_batch
        out = {}
        z = env.local(env.randn(B, LATENT))
        for tag, stream in (("a", "a"), ("b", "b")):
            real = env.to_device(env.batch(stream).images * 2 - 1)
            with torch.no_grad():
                fake = env.module(f"g_{tag}")(z)
            d = env.train_module(f"d_{tag}")
            env.set_trainable(f"d_{tag}", True)
            loss = (F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()) * (1 + 0.1 * torch.tanh(self.running))
            if (tag == "a" and not self._injected and env.ctx.rank == self.args.nan_rank and env.iteration == self.args.nan_iteration):
                self._injected = True
                loss = loss * float("nan")
            env.check_finite(loss, f"d_{tag} loss")
            env.step_optimizer(f"d_{tag}", loss)
            out[f"loss_d_{tag}"] = loss.detach()
        # state every rank must agree on: the loss averaged over a process sub-group of all ranks
        mean_loss = env.mean_over_ranks_(out["loss_d_a"].detach().clone().cpu(), ranks=list(range(env.ctx.world_size)))
        self.running = 0.8 * self.running + 0.2 * mean_loss
        loss_g = 0
        for tag in ("a", "b"):
            env.set_trainable(f"d_{tag}", False)
            loss_g = loss_g + F.softplus(-env.module(f"d_{tag}")(env.train_module(f"g_{tag}")(z))).mean()
            env.set_trainable(f"d_{tag}", True)
        env.check_finite(loss_g, "generator loss")
        env.step_optimizer("g", loss_g)
        out["loss_g"] = loss_g.detach()
        return StepOutput(out, completed_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running = state["running"].clone()

    @torch.no_grad()
    def synthesize(self, modules, n: int, seed: int) -> torch.Tensor:
        z = torch.randn(n, LATENT, generator=torch.Generator().manual_seed(seed))
        return ((modules["g_a"](z.to(self.env.device)).float().clamp(-1, 1) + 1) / 2).cpu()

    def model_file(self, arch_args) -> ModelFile:
        arch, args = arch_args["g_a"]
        return ModelFile(kind="noise", components={"generator": ComponentSpec(arch=arch, args=args, module="g_a")},
                         inputs={"latent": {"dim": LATENT, "distribution": "standard_normal"}},
                         output={"value_range": [0.0, 1.0], "channels": 1, "image_size": [32, 32], "bit_depth": 16})

