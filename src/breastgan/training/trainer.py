"""The training loop: one loop for every recipe (training/recipes/).

The recipe says what is trained and how one step goes; this loop does everything else: it builds
the recipe's modules, EMA copies, optimisers, schedulers, DDP wrappers and data streams, calls the
recipe's ``train_step`` once per iteration, and owns checkpoints, exact resume (also across a
structure change), roll-back after non-finite losses, logging, stop signals, in-training
evaluation and best-checkpoint selection.

Built for several processes from the start (``torchrun``): every random draw is made at the
*global* batch size from one seeded stream identical on all ranks (``StepEnv``), so a 2-process
run with batch b sees exactly the numbers a 1-process run with batch 2b sees. Only rank 0 reads or
writes the run directory: every decision that depends on files (resume, roll-back target) or on
rank 0's metrics (best checkpoint) is taken on rank 0 and broadcast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
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
from breastgan.distributed import DistContext, DistributedError, StopSignal, init_distributed
from breastgan.run_dir import RUN_RECORD, SNAPSHOTS, SUMMARY, CheckpointInfo, config_path, read_model_file, write_model_file
from breastgan.training.checkpoint import CheckpointManager, NonFiniteError, read_checkpoint, save_weights
from breastgan.training.ema import EMA
from breastgan.training.env import StepEnv, Stream
from breastgan.training.logger import RunLogger, get_logger
from breastgan.training.monitor import EquilibriumMonitor
from breastgan.training.recipes import RECIPES, Recipe
from breastgan.training.run_lock import RunDirLock
from breastgan.training.sampler import EpochBatchPlan
from breastgan.utils.atomic import write_json_atomic, write_text_atomic
from breastgan.utils.images import save_grid

# train.* keys that may change when a run is resumed (they do not alter what was already trained)
RESUMABLE_OVERRIDES = (
    "train.max_steps", "train.epochs", "train.log_every", "train.sample_every", "train.checkpoint_every",
    "train.keep_last", "train.progress", "train.device", "train.nonfinite", "train.max_rollbacks",
    # dm-GAN across sites: where the rendezvous is and how long to wait can change between sessions
    "recipe.sites.address", "recipe.sites.num_sites", "recipe.sites.mode", "recipe.sites.deadline_s", "recipe.sites.timeout_s", "recipe.sites.join_timeout_s",
)


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    stopped_early: bool
    summary: dict[str, Any]
    stop_signal: int | None = None  # the signal that stopped the run (the CLI exits with 128 + it)


def _versions() -> dict[str, str]:
    return {
        "breastgan": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _structure_seed(seed: int, structure: dict[str, Any]) -> int:
    # new layers of a rebuilt structure get weights that depend on (seed, structure) only, so an
    # interrupted run that passes the change after a resume builds exactly the same layers
    digest = hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).digest()
    return (seed * 1_000_003 + int.from_bytes(digest[:6], "little")) % (2**63)


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, ctx: DistContext, resume: bool = False):
        self.cfg, self.run_dir, self.ctx = config, Path(run_dir), ctx
        t = config.train
        self.log = get_logger()
        self.device = ctx.device
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision) if self.device.type == "cuda" else None
        if t.precision != "fp32" and self.device.type != "cuda":
            self.log.warning(f"train.precision={t.precision} applies to CUDA only; this CPU run uses fp32")
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False

        self.env = StepEnv(ctx, t.seed, amp_dtype, t.channels_last)
        self.env.run_dir = self.run_dir  # read-only: a recipe's transport may keep its own ledger there (dm-GAN sites)
        entry = RECIPES.entry(config.recipe.component)
        self.recipe: Recipe = entry.obj(config, config.recipe.validated_args(), self.env)

        # state --------------------------------------------------------------------------------
        self.step = 0  # completed steps (GAN: generator updates)
        self.iteration = 0  # train_step calls completed (GAN: discriminator updates)
        self.images_seen = 0  # primary-stream images over all iterations (the batch may change with the structure)
        self.rollbacks = 0
        self.best: tuple[str, float, int] | None = None
        self.last_checkpoint_step: int | None = None
        self.ckpt = CheckpointManager(self.run_dir, t.keep_last)

        latest = self._latest_checkpoint() if resume else None
        if resume and latest is None:
            raise FileNotFoundError(f"{self.run_dir}: no complete checkpoint to resume from (checkpoints/step_*/meta.json)")
        if latest is not None:
            self.recipe.set_structure(latest["structure"])  # before streams (batch size) and modules are built
        self._build_streams()
        if ctx.distributed:
            ctx.check_same("configuration", config.model_dump_json())
            for i, (name, s) in enumerate(self.env.streams.items()):
                if s.sharding == "global":
                    ctx.check_same("dataset" if i == 0 else f"dataset of stream {name!r}", s.dataset.fingerprint())
        self._build(initial=True)
        self.evaluators = self._build_evaluators()
        if latest is not None:
            self._restore_latest(latest)

    # -- building -----------------------------------------------------------------------------------
    def _build_streams(self) -> None:
        t, ctx = self.cfg.train, self.ctx
        for i, (name, spec) in enumerate(self.recipe.streams().items()):
            if spec.sharding == "global":
                plan = EpochBatchPlan(len(spec.dataset), spec.batch_size, ctx.world_size, ctx.rank, t.seed, spec.shuffle)
            else:
                plan = EpochBatchPlan(len(spec.dataset), spec.batch_size, 1, 0, t.seed + 7 * ctx.rank, spec.shuffle)
            stream = Stream(name, spec.dataset, plan, spec.sharding)
            stream.primary = i == 0
            self.env.streams[name] = stream
        if not self.env.streams:
            raise ConfigError(f"recipe {self.cfg.recipe.component!r} declares no data stream")

    def _build(self, initial: bool) -> None:
        """Modules, EMA copies, optimisers, scalers, schedulers and DDP wrappers for the current structure."""
        t, env, ctx = self.cfg.train, self.env, self.ctx
        old_modules, old_ema = dict(env.modules), dict(getattr(self, "ema", {}))
        if initial:
            torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
            modules = self.recipe.build_modules()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_structure_seed(t.seed, self.recipe.structure()))
                modules = self.recipe.build_modules()
            for name, m in modules.items():  # carry over every tensor whose name and shape survive
                if name in old_modules:
                    _carry_over(old_modules[name], m)
        for name, m in list(modules.items()):
            m = m.to(self.device)
            if t.channels_last:
                m = m.to(memory_format=torch.channels_last)
            if t.sync_batchnorm and ctx.distributed:
                if self.device.type == "cpu":
                    # torch's SyncBatchNorm raises deep inside the first forward on CPU tensors; say it up front
                    raise ConfigError("train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on CPU/gloo); "
                                      "set it to false, or use per-sample norms (norm: layer | instance) for CPU runs")
                m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
            modules[name] = m
        env.modules = modules
        env._trainable = {name: [p for p in m.parameters() if p.requires_grad] for name, m in modules.items()}
        self.ema: dict[str, EMA] = {}
        for name, decay in self.recipe.ema_modules().items():
            self.ema[name] = old_ema[name].rebuilt(modules[name]) if name in old_ema else EMA(modules[name], decay, t.ema.start_step)
        env.optimizers = {}
        for name, spec in self.recipe.optimizers().items():
            params = [p for m in spec.modules for p in env._trainable[m]]
            if not params:
                raise ConfigError(f"recipe optimiser {name!r} has no trainable parameters in modules {list(spec.modules)}")
            env.optimizers[name] = spec.factory(params)
        old_schedulers = dict(getattr(self, "schedulers", {}))
        self.schedulers = {name: spec.factory(env.optimizers[spec.optimizer]) for name, spec in self.recipe.schedulers().items()}
        for name, sched in self.schedulers.items():
            if name in old_schedulers:
                # optimiser moments restart with the new parameters (as ProGAN resets Adam at each stage),
                # but the learning-rate schedule continues where it was
                sched.load_state_dict(old_schedulers[name].state_dict())
                for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
                    group["lr"] = lr
        ddp = set(self.recipe.ddp_modules()) if ctx.distributed else set()
        ids = [self.device.index] if self.device.type == "cuda" else None
        env.train_modules = {name: (DDP(m, device_ids=ids) if name in ddp else m) for name, m in modules.items()}
        env.scalers = {name: torch.amp.GradScaler("cuda", enabled=env.amp_dtype == torch.float16) for name in env.optimizers}
        for m in env.train_modules.values():
            m.train()
        self.recipe.on_built(env)

    def _build_evaluators(self) -> list[tuple[Any, Any]]:
        out = []
        if self.ctx.is_main and self.cfg.train.eval:
            from breastgan.training.evaluation import TrainingEvaluator

            ref = self.recipe.eval_reference()
            out = [(spec, TrainingEvaluator(spec, ref)) for spec in self.cfg.train.eval]
        if self.cfg.train.eval and self.ctx.distributed:
            self.ctx.broadcast_object_patiently(None, "evaluation group")  # create the long-timeout group now, on every rank
        return out

    # -- progress -------------------------------------------------------------------------------------
    @property
    def primary(self) -> Stream:
        return self.env.primary

    @property
    def epoch(self) -> int:
        return self.primary.epoch

    @property
    def total_steps(self) -> int | None:
        t = self.cfg.train
        by_epochs = None
        if t.epochs is not None:
            by_epochs = (t.epochs * self.primary.plan.batches_per_epoch) // t.n_critic
        if t.max_steps is not None and by_epochs is not None:
            return min(t.max_steps, by_epochs)
        return t.max_steps if t.max_steps is not None else by_epochs

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        t = self.cfg.train
        total = self.total_steps
        logger = RunLogger(self.run_dir if self.ctx.is_main else None, total, t.progress and self.ctx.is_main, self.step)
        monitor = EquilibriumMonitor(t.monitor_window, self.log)
        sums: dict[str, float] = {}
        count = 0
        t_last, images_since = time.perf_counter(), 0
        stopped_early = False
        env = self.env
        try:
            with StopSignal() as stop:
                while total is None or self.step < total:
                    if self.primary.batch_in_epoch >= self.primary.plan.batches_per_epoch:
                        self._end_epoch()
                        continue
                    try:
                        # DDP all-reduces gradients inside backward(): a lost peer surfaces here
                        with self.ctx.collective_errors("training step"):
                            env.step, env.iteration = self.step, self.iteration
                            out = self.recipe.train_step(env)
                            self.iteration += 1
                            self.images_seen += self.primary.plan.global_batch
                            for s in env.streams.values():
                                s.advance()
                            if out.completed_step:
                                self.step += 1
                                for name, ema in self.ema.items():
                                    ema.update(env.modules[name], self.step)
                                for sched in self.schedulers.values():
                                    sched.step()
                    except NonFiniteError as exc:
                        self._handle_nonfinite(exc)
                        sums, count = {}, 0
                        continue
                    self._write_records()
                    images_since += self.primary.plan.global_batch
                    for k, v in out.losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                    if not out.completed_step:
                        continue
                    new_structure = self.recipe.next_structure(self.step)
                    if new_structure is not None and new_structure != self.recipe.structure():
                        self._change_structure(new_structure)
                    if self.step % t.log_every == 0:
                        now = time.perf_counter()
                        means = self.ctx.mean_over_ranks({k: v / count for k, v in sums.items()})
                        means.update({"images_per_s": images_since * 1.0 / max(now - t_last, 1e-9), "epoch": self.epoch})
                        means.update({f"lr/{n}": s.get_last_lr()[0] for n, s in self.schedulers.items()})
                        if self.ctx.is_main:
                            logger.scalars(self.step, means)
                            if "D(x)" in means and "D(G(z))" in means:
                                monitor.update(self.step, means["D(x)"], means["D(G(z))"])
                            logger.progress(self.step, means, {k: means[k] for k in sums})
                        sums, count, t_last, images_since = {}, 0, now, 0
                    if self.ctx.is_main and self.step % t.sample_every == 0:
                        self._write_samples(logger)
                    self._evaluate(logger)
                    if self.step % t.checkpoint_every == 0:
                        self._checkpoint()
                    # the flag carries the signal number, so every rank can report (and exit with) it
                    flag = self.ctx.all_reduce_max(float(stop.signum or 0) if stop.requested else 0.0, "stop flag")
                    if flag > 0:
                        self.log.warning(f"stop requested (signal) at step {self.step}: writing a final checkpoint")
                        stopped_early, self.stop_signal = True, int(flag)
                        break
            if self.primary.batch_in_epoch >= self.primary.plan.batches_per_epoch:
                self._end_epoch()  # the last step completed an epoch: count it (and snapshot it)
            if self.last_checkpoint_step != self.step:
                self._checkpoint()
            if t.best_metric:
                # every rank says what it believes: they agree because rank 0's verdicts are broadcast
                self.log.info(f"rank {self.ctx.rank}: best checkpoint step {self.best[2] if self.best else None} "
                              f"({t.best_metric} = {self.best[1] if self.best else None})")
            if self.ctx.is_main:
                self._write_samples(logger)
                summary = self._summary(stopped_early)
                summary["stop_signal"] = getattr(self, "stop_signal", None)
                write_json_atomic(self.run_dir / SUMMARY, summary)
            else:
                summary = {}
            self.ctx.barrier("end of training")
        finally:
            logger.close()
            self.recipe.on_finish()
        return RunResult(self.run_dir, self.step, self.epoch, stopped_early, summary, getattr(self, "stop_signal", None))

    def _end_epoch(self) -> None:
        p = self.primary
        p.epoch += 1
        p.batch_in_epoch = 0
        t = self.cfg.train
        if self.ctx.is_main and t.snapshot_every_epochs and p.epoch >= t.snapshot_start_epoch and p.epoch % t.snapshot_every_epochs == 0:
            name = next(iter(self.ema)) if self.ema else next(iter(self.env.modules))
            model = self.ema[name].model if self.ema else self.env.modules[name]
            save_weights(self.run_dir / SNAPSHOTS / f"epoch_{p.epoch:06d}.safetensors", model, {"epoch": str(p.epoch), "step": str(self.step)})

    def _write_records(self, force: bool = False) -> None:
        for name, content in self.recipe.records(force).items():
            if self.ctx.is_main:
                write_json_atomic(self.run_dir / name, content)

    # -- structure changes ----------------------------------------------------------------------------
    def _change_structure(self, structure: dict[str, Any]) -> None:
        old_batch = self.primary.plan.global_batch
        self.recipe.set_structure(structure)
        self._build(initial=False)
        self._rebatch(old_batch)
        if self.ctx.is_main:
            self.log.info(f"step {self.step}: structure changed to {structure}")
            write_model_file(self.run_dir, self.recipe.model_file(self.recipe.arch_args()))  # describes the newest checkpoints

    def _rebatch(self, old_global_batch: int) -> None:
        """Follow the recipe's per-structure batch size; positions count consumed samples."""
        p = self.primary
        new = self.recipe.batch_size()
        if new == p.plan.per_rank_batch:
            return
        plan = EpochBatchPlan(p.plan.num_samples, new, p.plan.world_size, p.plan.rank, p.plan.seed, p.plan.shuffle)
        p.plan = plan
        if p.batch_in_epoch > 0 and plan.global_batch != old_global_batch:
            p.batch_in_epoch = math.ceil(p.batch_in_epoch * old_global_batch / plan.global_batch)

    # -- non-finite losses ------------------------------------------------------------------------------
    def _handle_nonfinite(self, exc: NonFiniteError) -> None:
        t = self.cfg.train
        latest = self.last_checkpoint_step
        if t.nonfinite == "stop" or latest is None or self.rollbacks >= t.max_rollbacks:
            why = "" if t.nonfinite == "stop" else (" (no checkpoint to roll back to)" if latest is None else f" (after {self.rollbacks} roll-backs)")
            raise NonFiniteError(
                f"{exc}. Training stopped{why}; no checkpoint was written with non-finite values. "
                "Try a lower learning rate, gradient penalty, or train.nonfinite=rollback."
            ) from None
        rollbacks = self.rollbacks + 1
        self.log.warning(f"{exc}; rolling back to checkpoint step {latest} (roll-back {rollbacks}/{t.max_rollbacks})")
        self._restore(self._read_on_main(latest))
        self.rollbacks = rollbacks  # the restored state predates this roll-back
        # a different random stream, or the same batch and noise would reproduce the same blow-up
        self.env.rng.manual_seed(t.seed + 1_000_003 * self.rollbacks + self.step)

    # -- samples and evaluation ---------------------------------------------------------------------------
    def sampling_modules(self) -> dict[str, nn.Module]:
        """The modules outputs come from: EMA copies where kept, the raw modules otherwise."""
        return {name: (self.ema[name].model if name in self.ema else m) for name, m in self.env.modules.items()}

    def _write_samples(self, logger: RunLogger) -> None:
        images = self.recipe.preview(self.sampling_modules())
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        grid = save_grid(images, path)
        logger.image("samples", self.step, grid)

    def _evaluate(self, logger: RunLogger) -> None:
        """Due metrics on rank 0; values and the best-checkpoint verdict are broadcast to every rank."""
        from breastgan.training.evaluation import best_metric_value, is_better

        due = [spec for spec in self.cfg.train.eval if self.step % spec.every == 0]
        if not due:
            return
        key = self.cfg.train.best_metric
        verdict: dict[str, Any] = {"values": {}, "best": None}
        if self.ctx.is_main:
            modules = self.sampling_modules()
            for spec, evaluator in self.evaluators:
                if self.step % spec.every:
                    continue
                values = evaluator(lambda n, seed: self.recipe.synthesize(modules, n, seed))
                verdict["values"].update({f"{spec.metric}/{k}": v for k, (v, _) in values.items()})
                if key and key.split("/")[0] == spec.metric:
                    value, lower = best_metric_value(key, spec.metric, values)
                    if is_better(value, lower, self.best[1] if self.best else None):
                        verdict["best"] = (key, value, self.step)
            logger.scalars(self.step, verdict["values"])
        verdict = self.ctx.broadcast_object_patiently(verdict, "in-training evaluation")
        if verdict["best"] is not None:
            self.best = tuple(verdict["best"])  # type: ignore[assignment]
            self._checkpoint(best=True)

    # -- checkpoints ------------------------------------------------------------------------------------
    def _checkpoint(self, best: bool = False) -> None:
        if self.ctx.is_main:
            if self.last_checkpoint_step != self.step:
                self.ckpt.save(self.step, self.env.modules, {n: e.model for n, e in self.ema.items()}, self._training_state(), self._meta())
            self._write_records(force=True)
            if best and self.best is not None:
                self.ckpt.mark_best(self.step, self.best[0], self.best[1])
                self.ckpt.prune()
        self.last_checkpoint_step = self.step
        self.ctx.barrier("checkpoint")

    def _meta(self) -> dict[str, Any]:
        p = self.primary
        return {
            "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch, "iteration": self.iteration,
            "world_size": self.ctx.world_size, "effective_batch": p.plan.global_batch,
            "rollbacks": self.rollbacks, "best": list(self.best) if self.best else None,
            "recipe": self.cfg.recipe.component, "structure": self.recipe.structure(),
            # what this checkpoint's weights are, also when the structure changed since (run_dir.checkpoint_model_file)
            "model": self.recipe.model_file(self.recipe.arch_args()).model_dump(mode="json"),
        }

    def _training_state(self) -> dict[str, Any]:
        env = self.env
        return {
            "optimizers": {n: o.state_dict() for n, o in env.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in env.scalers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "rng": env.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loop": {"step": self.step, "iteration": self.iteration, "rollbacks": self.rollbacks, "images_seen": self.images_seen,
                     "streams": {n: s.position() for n, s in env.streams.items()}},
            "recipe": self.recipe.state_dict(),
        }

    def _latest_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0 looks at the run directory; every rank learns the step and structure."""
        found = None
        if self.ctx.is_main:
            latest = self.ckpt.latest()
            if latest is not None:
                found = {"step": latest.step, "structure": latest.structure}
        return self.ctx.broadcast_object(found, what="latest checkpoint")

    def _read_on_main(self, step: int) -> dict[str, Any]:
        """Rank 0 reads checkpoint ``step`` (and the recipe's records); the others receive it by broadcast."""
        payload = None
        if self.ctx.is_main:
            info = next((i for i in self.ckpt.list() if i.step == step), None)
            if info is None:
                raise FileNotFoundError(f"{self.run_dir}: checkpoint for step {step} disappeared")
            payload = read_checkpoint(info)
            names = self.recipe.record_names()
            payload["records"] = {n: json.loads((self.run_dir / n).read_text()) for n in names if (self.run_dir / n).is_file()}
        return self.ctx.broadcast_object(payload, what=f"checkpoint step {step}")

    def _restore_latest(self, latest: dict[str, Any]) -> None:
        payload = self._read_on_main(latest["step"])
        self._restore(payload)
        meta = payload["meta"]
        old_world = meta.get("world_size", 1)
        if old_world != self.ctx.world_size and self.ctx.is_main:
            self.log.warning(
                f"resuming a {old_world}-process run with {self.ctx.world_size} process(es): the global data order and "
                f"random draws continue unchanged, but the effective batch is now {self.primary.plan.global_batch} "
                f"(was {meta.get('effective_batch')}), so epochs have a different number of steps"
            )
        best = meta.get("best")
        self.best = tuple(best) if best else None  # type: ignore[assignment]
        if self.ctx.is_main:
            p = self.primary
            self.log.info(f"resumed from {payload['path']} (step {self.step}, epoch {p.epoch}, batch {p.batch_in_epoch})")

    def _restore(self, payload: dict[str, Any]) -> None:
        env, st = self.env, payload["state"]
        structure = dict(payload["meta"].get("structure") or {})
        if structure != self.recipe.structure():  # a roll-back across a structure change
            old_batch = self.primary.plan.global_batch
            self.recipe.set_structure(structure)
            self._build(initial=False)
            self._rebatch(old_batch)
        dev = str(self.device)
        for name, m in env.modules.items():
            if name not in payload["weights"]:
                raise ConfigError(f"{payload['path']}: checkpoint has no weights for module {name!r} (has {sorted(payload['weights'])})")
            m.load_state_dict({k: v.to(dev) for k, v in payload["weights"][name].items()})
        for name, ema in self.ema.items():
            ema.model.load_state_dict({k: v.to(dev) for k, v in payload["ema"][name].items()})
        for name, opt in env.optimizers.items():
            opt.load_state_dict(st["optimizers"][name])
        for name, scaler in env.scalers.items():
            scaler.load_state_dict(st["scalers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(st["schedulers"][name])
        env.rng.set_state(st["rng"].cpu())
        torch.set_rng_state(st["torch_rng"].cpu())
        loop = st["loop"]
        self.step, self.iteration, self.rollbacks = loop["step"], loop["iteration"], loop["rollbacks"]
        # checkpoints of breastgan 0.1 had one batch size throughout
        self.images_seen = loop.get("images_seen", self.iteration * int(payload["meta"].get("effective_batch", self.primary.plan.global_batch)))
        saved_batch = int(payload["meta"].get("effective_batch", 0))
        for name, pos in loop["streams"].items():
            s = env.streams[name]
            s.epoch, s.batch_in_epoch = pos["epoch"], pos["batch_in_epoch"]
        p = self.primary
        if p.batch_in_epoch > 0 and saved_batch and p.plan.global_batch != saved_batch:
            # positions are counted in global batches: map the consumed samples to the new batch size
            p.batch_in_epoch = math.ceil(p.batch_in_epoch * saved_batch / p.plan.global_batch)
        self.recipe.load_state_dict(st.get("recipe") or {})
        self.recipe.on_restore({**payload.get("records", {}), "__checkpoint__": payload["path"]})
        self.last_checkpoint_step = payload["step"]

    def _summary(self, stopped_early: bool) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "iterations": self.iteration, "stopped_early": stopped_early,
            "images_seen": self.images_seen,
            "best": {"metric": self.best[0], "value": self.best[1], "step": self.best[2]} if self.best else None,
            "rollbacks": self.rollbacks, "finished": datetime.now(timezone.utc).isoformat(),
            **self.recipe.summary(),
        }


def _carry_over(old: nn.Module, new: nn.Module) -> None:
    old_state = old.state_dict()
    with torch.no_grad():
        for name, t in new.state_dict().items():
            if name in old_state and old_state[name].shape == t.shape:
                t.copy_(old_state[name].to(t.device))


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
    write_text_atomic(config_path(run_dir), cfg.to_yaml())
    arch_args = trainer.recipe.arch_args()
    if not (resumed and (run_dir / "generator.json").is_file() and not (run_dir / "model.json").is_file()):
        write_model_file(run_dir, trainer.recipe.model_file(arch_args))
    else:
        read_model_file(run_dir)  # a run made before model.json: its v1 file stays the description
    record_path = run_dir / RUN_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"sessions": []}
    streams = {name: {"name": s.dataset.info.name, "size": len(s.dataset), "fingerprint": s.dataset.fingerprint(),
                      "class_names": list(s.dataset.info.class_names)} for name, s in trainer.env.streams.items()}
    record.update({
        "config_sha256": hashlib.sha256(cfg.model_dump_json().encode()).hexdigest(),
        "seed": cfg.train.seed,
        "recipe": {"name": cfg.recipe.component, "args": cfg.recipe.args},
        "dataset": next(iter(streams.values())), "streams": streams,
        "modules": {name: {"arch": a, "args": args} for name, (a, args) in arch_args.items()},
        "loss": {"name": cfg.loss.name, "args": cfg.loss.args, "terms": [t.model_dump() for t in cfg.loss.terms]},
    })
    record["sessions"].append({
        "started": datetime.now(timezone.utc).isoformat(), "resumed": resumed, "argv": sys.argv,
        "world_size": trainer.ctx.world_size, "per_process_batch": cfg.train.batch_size,
        "effective_batch": trainer.primary.plan.global_batch, "device": str(trainer.device), "backend": trainer.ctx.backend,
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
    """Train a recipe; returns where the run lives and how far it got.

    ``config``: a :class:`RunConfig`, a dict, or a YAML path (defaults: DCGAN on phantom patches).
    ``resume``: a run directory; continues from its latest checkpoint with its saved configuration
    (``overrides`` may then change only the keys in ``RESUMABLE_OVERRIDES``, e.g. train.max_steps).
    """
    own_ctx = ctx is None
    lock: RunDirLock | None = None
    if resume is not None:
        run_path = Path(resume)
        saved = config_path(run_path)
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
        if ctx.is_main:
            lock = RunDirLock(run_path).acquire()
            if lock.stale:
                get_logger().warning(f"{run_path}: the previous trainer (PID {lock.stale.get('pid')} on host {lock.stale.get('host')}, "
                                     f"started {lock.stale.get('started')}) ended without releasing its lock; taking over")
        ctx.barrier("run directory")
        trainer = Trainer(cfg, run_path, ctx, resume=resume is not None)
        if ctx.is_main:
            _write_run_files(trainer, cfg, run_path, resume is not None)
        ctx.barrier("run files")
        return trainer.fit()
    except DistributedError:
        raise
    finally:
        if lock is not None:
            lock.release()
        if own_ctx:
            from breastgan.distributed import shutdown

            shutdown(ctx)


__all__ = ["Trainer", "RunResult", "train", "RESUMABLE_OVERRIDES", "CheckpointInfo"]
