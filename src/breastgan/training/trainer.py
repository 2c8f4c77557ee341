"""The GAN training loop: one loop for every registered generator, discriminator and loss.

Built for several processes from the start (``torchrun``): every random draw (latents, flips, label
smoothing, augmentation, gradient-penalty interpolation) is made at the *global* batch size from one
seeded stream that is identical on all ranks, and each rank takes its slice. So a 2-process run with
batch b sees exactly the numbers a 1-process run with batch 2b sees, the EMA and the n_critic
schedule are identical on all ranks, and a resume restores the stream exactly. Only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from breastgan import __version__
from breastgan.config import ConfigError, RunConfig, load_config
from breastgan.data.base import ImageDataset, build_dataset
from breastgan.distributed import DistContext, DistributedError, StopSignal, init_distributed
from breastgan.losses import LOSSES, AdversarialLoss, gradient_penalty
from breastgan.models.registry import DISCRIMINATORS, GENERATORS, resolve_args
from breastgan.training.augment import DiffAugment, random_flips
from breastgan.training.callbacks import EVAL_CALLBACKS
from breastgan.training.checkpoint import CheckpointManager, NonFiniteError, load_training_state, save_weights
from breastgan.training.ema import EMA
from breastgan.training.logger import RunLogger, get_logger
from breastgan.training.monitor import EquilibriumMonitor
from breastgan.training.sampler import EpochBatchPlan
from breastgan.utils.atomic import write_json_atomic, write_text_atomic
from breastgan.utils.images import save_grid

# train.* keys that may change when a run is resumed (they do not alter what was already trained)
RESUMABLE_OVERRIDES = (
    "train.max_steps", "train.epochs", "train.log_every", "train.sample_every", "train.checkpoint_every",
    "train.keep_last", "train.progress", "train.device", "train.nonfinite", "train.max_rollbacks",
)


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    stopped_early: bool
    summary: dict[str, Any]


def _versions() -> dict[str, str]:
    return {
        "breastgan": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1  # datasets give [0, 1]; generators end in tanh


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, ctx: DistContext, resume: bool = False):
        self.cfg, self.run_dir, self.ctx = config, Path(run_dir), ctx
        t = config.train
        self.log = get_logger()
        self.device = ctx.device
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision) if self.device.type == "cuda" else None
        if t.precision != "fp32" and self.device.type != "cuda":
            self.log.warning(f"train.precision={t.precision} applies to CUDA only; this CPU run uses fp32")
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False

        # data -------------------------------------------------------------------------------
        self.dataset: ImageDataset = build_dataset(config.data.source.component, config.data.source.args)
        info = self.dataset.info
        self.num_classes = info.num_classes if config.data.conditional else 0
        if config.data.conditional and info.num_classes < 2:
            raise ConfigError(f"data.conditional is true but dataset {info.name!r} has a single class {info.class_names}")
        labels = getattr(self.dataset, "labels", None)
        self.all_labels = labels.long() if isinstance(labels, torch.Tensor) else torch.tensor([self.dataset[i][1] for i in range(len(self.dataset))], dtype=torch.long)
        self.plan = EpochBatchPlan(len(self.dataset), t.batch_size, ctx.world_size, ctx.rank, t.seed)
        if ctx.distributed:
            ctx.check_same("configuration", config.model_dump_json())
            ctx.check_same("dataset", self.dataset.fingerprint())

        # models -----------------------------------------------------------------------------
        if info.image_size[0] != info.image_size[1]:
            derived_size: Any = info.image_size
        else:
            derived_size = info.image_size[0]
        derived = {"image_size": derived_size, "channels": info.channels, "num_classes": self.num_classes}
        self.g_spec = {"arch": config.model.generator.component, "args": resolve_args(GENERATORS, config.model.generator.component, config.model.generator.args, derived, "model.generator")}
        self.d_spec = {"arch": config.model.discriminator.component, "args": resolve_args(DISCRIMINATORS, config.model.discriminator.component, config.model.discriminator.args, derived, "model.discriminator")}
        torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        self.G = GENERATORS.get(self.g_spec["arch"])(**self.g_spec["args"]).to(self.device)
        self.D = DISCRIMINATORS.get(self.d_spec["arch"])(**self.d_spec["args"]).to(self.device)
        if t.channels_last:
            self.G, self.D = self.G.to(memory_format=torch.channels_last), self.D.to(memory_format=torch.channels_last)
        if t.sync_batchnorm and ctx.distributed:
            if self.device.type == "cpu":
                # torch's SyncBatchNorm raises deep inside the first forward on CPU tensors; say it up front
                raise ConfigError("train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on CPU/gloo); "
                                  "set it to false, or use per-sample norms (norm: layer | instance) for CPU runs")
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            self.D = nn.SyncBatchNorm.convert_sync_batchnorm(self.D)
        self.ema = EMA(self.G, t.ema.decay, t.ema.start_step)
        self.loss: AdversarialLoss = LOSSES.build(config.loss.name, config.loss.args)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.optim.lr_g, betas=config.optim.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.optim.lr_d, betas=config.optim.betas)
        # DDP wraps the modules that take gradients; G-steps call D's plain module (its parameters are
        # frozen then, and an unused DDP forward would leave its reducer waiting for gradients)
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_train: nn.Module = DDP(self.G, device_ids=ids)
            self.D_train: nn.Module = DDP(self.D, device_ids=ids)
        else:
            self.G_train, self.D_train = self.G, self.D
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.diffaug = DiffAugment(t.augment.ops, t.augment.translation, t.augment.cutout) if t.augment.policy == "diffaugment" else None
        from breastgan.training.dp import attach_dp  # DP-SGD discriminator step; None keeps the ordinary path

        self.dp = attach_dp(self, t.dp)

        # state ------------------------------------------------------------------------------
        self.rng = torch.Generator().manual_seed(t.seed)
        self.step = 0  # generator updates done
        self.d_iters = 0  # discriminator updates done
        self.epoch = 0
        self.batch_in_epoch = 0
        self.rollbacks = 0
        self.best: tuple[str, float, int] | None = None
        self.ckpt = CheckpointManager(self.run_dir, t.keep_last)
        self.callbacks = []
        if ctx.is_main:
            for spec in t.eval:
                cb = EVAL_CALLBACKS.build(spec.metric, spec.args, real=self.dataset)
                self.callbacks.append((spec.metric, spec.every, cb))
        self.fixed_z = torch.randn(t.grid_size, self.G.latent_dim, generator=torch.Generator().manual_seed(t.seed + 7919))
        self.fixed_labels = torch.arange(t.grid_size) % self.num_classes if self.num_classes else None
        if resume:
            self._restore_latest()

    # ------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int | None:
        t = self.cfg.train
        by_epochs = None
        if t.epochs is not None:
            by_epochs = (t.epochs * self.plan.batches_per_epoch) // t.n_critic
        if t.max_steps is not None and by_epochs is not None:
            return min(t.max_steps, by_epochs)
        return t.max_steps if t.max_steps is not None else by_epochs

    def _draw(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.rng)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's real images (in [-1, 1], flipped) and the GLOBAL batch's labels."""
        gidx = self.plan.global_indices(self.epoch, self.batch_in_epoch)
        idx = self.plan.rank_slice(gidx)
        if hasattr(self.dataset, "get_batch"):
            images, _ = self.dataset.get_batch(idx)
        else:
            images = torch.stack([self.dataset[int(i)][0] for i in idx])
        labels_all = self.all_labels[gidx]
        u = self.plan.rank_slice(self._draw(len(gidx), 2))
        images = random_flips(images, u, self.cfg.data.hflip, self.cfg.data.vflip)
        return _to_model_range(images.float()), labels_all, idx

    def _labels(self, labels_global: torch.Tensor) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return self._to_device(self.plan.rank_slice(labels_global))

    def _augment(self, x: torch.Tensor, u_global: torch.Tensor | None) -> torch.Tensor:
        if self.diffaug is None or u_global is None:
            return x
        return self.diffaug(x, self._to_device(self.plan.rank_slice(u_global)).to(x.dtype))

    def _aug_draw(self, n: int) -> torch.Tensor | None:
        return self._draw(n, DiffAugment.N_RANDOM) if self.diffaug is not None else None

    # ------------------------------------------------------------------------------------------
    def d_step(self) -> dict[str, torch.Tensor]:
        B = self.plan.global_batch
        real, labels_global, _ = self._real_batch()
        real = self._to_device(real)
        labels = self._labels(labels_global)
        z = self._to_device(self.plan.rank_slice(torch.randn(B, self.G.latent_dim, generator=self.rng)))
        targets = self.loss.real_targets(B, self.rng, torch.device("cpu"))
        targets = self._to_device(self.plan.rank_slice(targets)) if targets is not None else None
        u_real, u_fake = self._aug_draw(B), self._aug_draw(B)
        alpha = self._to_device(self.plan.rank_slice(self._draw(B, 1, 1, 1))) if self.loss.gp_lambda > 0 else None

        self.D.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = self.G(z, labels)
        with self._autocast():
            d_real = self.D_train(self._augment(real, u_real), labels)
            d_fake = self.D_train(self._augment(fake, u_fake), labels)
            loss = self.loss.discriminator_loss(d_real.float(), d_fake.float(), targets)
        out = {"loss_d": loss.detach(), "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
        if self.loss.probabilistic:
            out["D(x)"] = torch.sigmoid(d_real.detach().float()).mean()
            out["D(G(z))"] = torch.sigmoid(d_fake.detach().float()).mean()
        if alpha is not None:
            gp = gradient_penalty(
                lambda x, y: self.D_train(self._augment(x, u_real), y), real, fake.float(), alpha, labels,
                getattr(self.loss, "gp_target", 1.0),
            )
            loss = loss + self.loss.gp_lambda * gp
            out["gp"] = gp.detach()
        self._check_finite(loss, "discriminator loss")
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.d_iters += 1
        self._last_labels_global = labels_global
        return out

    def g_step(self) -> dict[str, torch.Tensor]:
        B = self.plan.global_batch
        labels = self._labels(self._last_labels_global)
        z = self._to_device(self.plan.rank_slice(torch.randn(B, self.G.latent_dim, generator=self.rng)))
        u = self._aug_draw(B)
        self.D.requires_grad_(False)
        with self._autocast():
            fake = self.G_train(z, labels)
            loss = self.loss.generator_loss(self.D(self._augment(fake, u), labels).float())
        self._check_finite(loss, "generator loss")
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.D.requires_grad_(True)
        self.step += 1
        self.ema.update(self.G, self.step)
        return {"loss_g": loss.detach()}

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss).item():
            raise NonFiniteError(f"{what} is {float(loss.detach())} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    # ------------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        t = self.cfg.train
        total = self.total_steps
        logger = RunLogger(self.run_dir if self.ctx.is_main else None, total, t.progress and self.ctx.is_main, self.step)
        monitor = EquilibriumMonitor(t.monitor_window, self.log)
        sums: dict[str, float] = {}
        count = 0
        t_last, images_since = time.perf_counter(), 0
        stopped_early = False
        self.G_train.train()
        self.D_train.train()
        try:
            with StopSignal() as stop:
                while total is None or self.step < total:
                    if self.batch_in_epoch >= self.plan.batches_per_epoch:
                        self._end_epoch()
                        continue
                    try:
                        # DDP all-reduces gradients inside backward(): a lost peer surfaces here
                        with self.ctx.collective_errors("training step"):
                            stats = self.dp.d_step() if self.dp is not None else self.d_step()
                            self.batch_in_epoch += 1
                            if self.d_iters % t.n_critic == 0:
                                stats.update(self.g_step())
                    except NonFiniteError as exc:
                        self._handle_nonfinite(exc)
                        sums, count = {}, 0
                        continue
                    images_since += self.plan.global_batch
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                    if "loss_g" not in stats:
                        continue
                    if self.step % t.log_every == 0:
                        now = time.perf_counter()
                        means = {k: v / count for k, v in sums.items()}
                        means.update({"images_per_s": images_since / max(now - t_last, 1e-9), "epoch": self.epoch})
                        if self.ctx.is_main:
                            logger.scalars(self.step, means)
                            if self.loss.probabilistic:
                                monitor.update(self.step, means["D(x)"], means["D(G(z))"])
                            logger.advance(self.step, f"{means['images_per_s']:.0f} img/s  D {means['loss_d']:.3f}  G {means.get('loss_g', float('nan')):.3f}")
                        sums, count, t_last, images_since = {}, 0, now, 0
                    if self.ctx.is_main and self.step % t.sample_every == 0:
                        self._write_samples(logger)
                    if self.ctx.is_main:
                        self._run_callbacks(logger)
                    if self.step % t.checkpoint_every == 0:
                        self._checkpoint()
                    if self.ctx.all_reduce_max(1.0 if stop.requested else 0.0, "stop flag") > 0:
                        self.log.warning(f"stop requested (signal) at step {self.step}: writing a final checkpoint")
                        stopped_early = True
                        break
            if self.batch_in_epoch >= self.plan.batches_per_epoch:
                self._end_epoch()  # the last step completed an epoch: count it (and snapshot it)
            if self.ckpt.latest() is None or self.ckpt.latest().step != self.step:
                self._checkpoint()
            if self.ctx.is_main:
                self._write_samples(logger)
                summary = self._summary(stopped_early)
                write_json_atomic(self.run_dir / "summary.json", summary)
            else:
                summary = {}
            self.ctx.barrier("end of training")
        finally:
            logger.close()
        return RunResult(self.run_dir, self.step, self.epoch, stopped_early, summary)

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        t = self.cfg.train
        if self.ctx.is_main and t.snapshot_every_epochs and self.epoch >= t.snapshot_start_epoch and self.epoch % t.snapshot_every_epochs == 0:
            save_weights(self.run_dir / "snapshots" / f"epoch_{self.epoch:06d}.safetensors", self.ema.model, {"epoch": str(self.epoch), "step": str(self.step)})

    def _handle_nonfinite(self, exc: NonFiniteError) -> None:
        t = self.cfg.train
        latest = self.ckpt.latest()
        if t.nonfinite == "stop" or latest is None or self.rollbacks >= t.max_rollbacks:
            why = "" if t.nonfinite == "stop" else (" (no checkpoint to roll back to)" if latest is None else f" (after {self.rollbacks} roll-backs)")
            raise NonFiniteError(
                f"{exc}. Training stopped{why}; no checkpoint was written with non-finite values. "
                "Try a lower learning rate, gradient penalty, or train.nonfinite=rollback."
            ) from None
        rollbacks = self.rollbacks + 1
        self.log.warning(f"{exc}; rolling back to checkpoint step {latest.step} (roll-back {rollbacks}/{t.max_rollbacks})")
        self._restore(latest.path)
        self.rollbacks = rollbacks  # the restored state predates this roll-back
        # a different random stream, or the same batch and noise would reproduce the same blow-up
        self.rng.manual_seed(t.seed + 1_000_003 * self.rollbacks + self.step)

    # ------------------------------------------------------------------------------------------
    def _sample_ema(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.G.latent_dim, generator=g)
        labels = torch.randint(0, self.num_classes, (n,), generator=g) if self.num_classes else None
        return self._generate(z, labels)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor, labels: torch.Tensor | None, batch: int = 64) -> torch.Tensor:
        model = self.ema.model
        out = []
        for i in range(0, z.shape[0], batch):
            lab = labels[i : i + batch].to(self.device) if labels is not None else None
            out.append(((model(z[i : i + batch].to(self.device), lab).float().clamp(-1, 1) + 1) / 2).cpu())
        return torch.cat(out)

    def _write_samples(self, logger: RunLogger) -> None:
        images = self._generate(self.fixed_z, self.fixed_labels)
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        grid = save_grid(images, path)
        logger.image("samples", self.step, grid)

    def _run_callbacks(self, logger: RunLogger) -> None:
        for name, every, cb in self.callbacks:
            if self.step % every:
                continue
            values = cb(self._sample_ema, self.step)
            logger.scalars(self.step, {f"{name}/{k}": v for k, v in values.items()})
            key = self.cfg.train.best_metric
            if key and key.split("/")[0] == name:
                metric = key.split("/", 1)[1] if "/" in key else next(iter(values))
                if metric not in values:
                    raise ConfigError(f"train.best_metric {key!r}: callback {name!r} reports {sorted(values)}, not {metric!r}")
                v = float(values[metric])
                better = self.best is None or (v < self.best[1] if cb.lower_is_better else v > self.best[1])
                if better and math.isfinite(v):
                    self.best = (key, v, self.step)
                    self._checkpoint(best=True)

    def _checkpoint(self, best: bool = False) -> None:
        if self.ctx.is_main:
            existing = self.ckpt.latest()
            if existing is None or existing.step != self.step:
                self.ckpt.save(self.step, self.G, self.ema.model, self.D, self._training_state(), self._position())
            if best and self.best is not None:
                self.ckpt.mark_best(self.step, self.best[0], self.best[1])
                self.ckpt.prune()
        self.ctx.barrier("checkpoint")

    def _position(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "d_iters": self.d_iters,
            "world_size": self.ctx.world_size, "effective_batch": self.plan.global_batch,
            "rollbacks": self.rollbacks, "best": list(self.best) if self.best else None,
        }

    def _training_state(self) -> dict[str, Any]:
        return {
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": self.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step, "d_iters": self.d_iters, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "rollbacks": self.rollbacks,
            "last_labels_global": getattr(self, "_last_labels_global", torch.zeros(0, dtype=torch.long)),
            **({"dp": self.dp.state_dict()} if self.dp is not None else {}),
        }

    def _restore_latest(self) -> None:
        latest = self.ckpt.latest()
        if latest is None:
            raise FileNotFoundError(f"{self.run_dir}: no complete checkpoint to resume from (checkpoints/step_*/meta.json)")
        self._restore(latest.path)
        old_world = latest.meta.get("world_size", 1)
        if old_world != self.ctx.world_size and self.ctx.is_main:
            self.log.warning(
                f"resuming a {old_world}-process run with {self.ctx.world_size} process(es): the global data order and "
                f"random draws continue unchanged, but the effective batch is now {self.plan.global_batch} "
                f"(was {latest.meta.get('effective_batch')}), so epochs have a different number of steps"
            )
        best = latest.meta.get("best")
        self.best = tuple(best) if best else None  # type: ignore[assignment]
        self.log.info(f"resumed from {latest.path} (step {self.step}, epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _restore(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.G.load_state_dict(load_file(str(path / "generator.safetensors"), device=str(self.device)))
        self.ema.model.load_state_dict(load_file(str(path / "generator_ema.safetensors"), device=str(self.device)))
        self.D.load_state_dict(load_file(str(path / "discriminator.safetensors"), device=str(self.device)))
        st = load_training_state(path, self.device)
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.scaler_g.load_state_dict(st["scaler_g"])
        self.scaler_d.load_state_dict(st["scaler_d"])
        self.rng.set_state(st["rng"].cpu())
        torch.set_rng_state(st["torch_rng"].cpu())
        self.step, self.d_iters, self.epoch, self.batch_in_epoch = st["step"], st["d_iters"], st["epoch"], st["batch_in_epoch"]
        self.rollbacks = st["rollbacks"]
        if self.dp is not None:
            self.dp.load_state_dict(st.get("dp"), path)
        if st["last_labels_global"].numel():
            self._last_labels_global = st["last_labels_global"].cpu()
        saved_batch = self._saved_global_batch(path)
        if self.batch_in_epoch > 0 and self.plan.global_batch != saved_batch:
            # positions are counted in global batches: map the consumed samples to the new batch size
            self.batch_in_epoch = math.ceil(self.batch_in_epoch * saved_batch / self.plan.global_batch)

    @staticmethod
    def _saved_global_batch(path: Path) -> int:
        return int(json.loads((path / "meta.json").read_text()).get("effective_batch", 0))

    def _summary(self, stopped_early: bool) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "d_iters": self.d_iters, "stopped_early": stopped_early,
            "images_seen": self.d_iters * self.plan.global_batch,
            "best": {"metric": self.best[0], "value": self.best[1], "step": self.best[2]} if self.best else None,
            "rollbacks": self.rollbacks, "finished": datetime.now(timezone.utc).isoformat(),
            **({"differential_privacy": self.dp.guarantee()} if self.dp is not None else {}),
        }


# ----------------------------------------------------------------------------------------------
def _new_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _write_run_files(trainer: Trainer, cfg: RunConfig, run_dir: Path, resumed: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    info = trainer.dataset.info
    generator_meta = {
        "format": "breastgan-generator/1",
        "arch": trainer.g_spec["arch"],
        "args": trainer.g_spec["args"],
        "output": {"value_range": [0.0, 1.0], "channels": info.channels, "image_size": list(info.image_size), "bit_depth": info.bit_depth},
        "class_names": list(info.class_names) if trainer.num_classes else [],
    }
    write_json_atomic(run_dir / "generator.json", generator_meta)
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"sessions": []}
    record.update({
        "config_sha256": hashlib.sha256(cfg.model_dump_json().encode()).hexdigest(),
        "seed": cfg.train.seed,
        "dataset": {"name": info.name, "size": len(trainer.dataset), "fingerprint": trainer.dataset.fingerprint(), "class_names": list(info.class_names)},
        "generator": trainer.g_spec, "discriminator": trainer.d_spec, "loss": {"name": cfg.loss.name, "args": cfg.loss.args},
    })
    record["sessions"].append({
        "started": datetime.now(timezone.utc).isoformat(), "resumed": resumed, "argv": sys.argv,
        "world_size": trainer.ctx.world_size, "per_process_batch": cfg.train.batch_size,
        "effective_batch": trainer.plan.global_batch, "device": str(trainer.device), "backend": trainer.ctx.backend,
        "versions": _versions(),
    })
    write_json_atomic(record_path, record)


def train(
    config: RunConfig | dict | str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    ctx: DistContext | None = None,
) -> RunResult:
    """Train a GAN; returns where the run lives and how far it got.

    ``config``: a :class:`RunConfig`, a dict, or a YAML path (defaults: DCGAN on phantom patches).
    ``resume``: a run directory; continues from its latest checkpoint with its saved configuration
    (``overrides`` may then change only the keys in ``RESUMABLE_OVERRIDES``, e.g. train.max_steps).
    """
    own_ctx = ctx is None
    if resume is not None:
        run_path = Path(resume)
        saved = run_path / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{run_path}: not a breastgan run (no config.yaml)")
        bad = [o.split("=", 1)[0] for o in overrides or [] if o.split("=", 1)[0].strip() not in RESUMABLE_OVERRIDES]
        if bad:
            raise ConfigError(f"cannot change {bad} when resuming; allowed: {', '.join(RESUMABLE_OVERRIDES)}")
        cfg = load_config(saved, overrides)
    else:
        cfg = load_config(config, overrides)
    ctx = ctx or init_distributed(cfg.train.device)
    try:
        if resume is None:
            chosen = Path(run_dir) if run_dir is not None else _new_run_dir(cfg)
            run_path = Path(ctx.broadcast_object(str(chosen) if ctx.is_main else None, what="run directory"))
            if ctx.is_main and run_path.exists() and any(run_path.iterdir()):
                raise FileExistsError(f"{run_path} already holds files; resume it with --resume or choose another directory")
        ctx.barrier("run directory")
        trainer = Trainer(cfg, run_path, ctx, resume=resume is not None)
        if ctx.is_main:
            _write_run_files(trainer, cfg, run_path, resume is not None)
        ctx.barrier("run files")
        return trainer.fit()
    except DistributedError:
        raise
    finally:
        if own_ctx:
            from breastgan.distributed import shutdown

            shutdown(ctx)
