"""Train one classifier, keep the checkpoint with the best validation AUPRC, evaluate it.

Mode switching is structural, not a convention: every epoch starts with ``model.train()`` and a
check that every submodule is in training mode, and evaluation runs inside :func:`eval_mode`,
which restores the previous mode on exit. The published code of the model-sharing study switched
to eval mode for validation and never back, so from epoch 2 it trained with frozen batch norm and
no dropout (methods.md section 4, pitfall 1).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from breastgan.utility.data import EpochSampler, TrainingSet, drawn_by_source
from breastgan.utility.metrics import binary_metrics


class FitConfig(BaseModel):
    """The study's optimiser (SGD lr 0.001, momentum 0.9, up to 100 epochs) with CPU-budget knobs."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(100, ge=1, description="upper limit of epochs (the study: 100)")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better validation AUPRC (none: run all epochs)")
    sampler: Literal["shuffle", "class_balanced"] = "shuffle"
    hflip: bool = Field(True, description="random horizontal flip, p = 0.5, applied to every training image alike")
    vflip: bool = Field(True, description="random vertical flip, p = 0.5, applied to every training image alike")
    eval_batch_size: int = Field(128, ge=1)


def assert_mode(model: nn.Module, training: bool) -> None:
    wrong = [name or type(model).__name__ for name, m in model.named_modules() if m.training != training]
    if wrong:
        raise RuntimeError(f"model should be in {'train' if training else 'eval'} mode but {len(wrong)} module(s) are not, e.g. {wrong[:3]}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


def predict(model: nn.Module, data: TrainingSet, batch_size: int = 128, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, C) log-probabilities in eval mode (the previous mode is restored afterwards)."""
    outs = []
    with eval_mode(model):
        assert_mode(model, False)
        for a in range(0, len(data), batch_size):
            outs.append(model(data.images[a : a + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 2)


def flip_batch(x: torch.Tensor, generator: torch.Generator, hflip: bool, vflip: bool) -> torch.Tensor:
    """Per-image random flips; the decision never looks at where an image came from."""
    n = x.shape[0]
    if hflip:
        m = torch.rand(n, generator=generator) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x)
    if vflip:
        m = torch.rand(n, generator=generator) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(-2), x)
    return x


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict[str, float]
    epochs_run: int
    seconds: float
    log: list[dict]


def fit(model: nn.Module, train: TrainingSet, val: TrainingSet, cfg: FitConfig, seed: int, run_dir: Path,
        device: str | torch.device = "cpu", positive: int = 1) -> FitResult:
    """SGD on NLL of the log-softmax output; best validation AUPRC -> ``best.safetensors``; log -> ``log.jsonl``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = EpochSampler(train.labels, cfg.sampler)
    best_score, best_epoch, best_val, stale = -math.inf, 0, {}, 0
    log: list[dict] = []
    t0 = time.perf_counter()
    ckpt = run_dir / "best.safetensors"
    with open(run_dir / "log.jsonl", "w") as fh:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            assert_mode(model, True)
            order = sampler.epoch(gen)
            total, seen = 0.0, 0
            # drop a last batch of one image: batch norm cannot train on it
            stop = len(order) - (1 if len(order) % cfg.batch_size == 1 else 0)
            for a in range(0, stop, cfg.batch_size):
                idx = order[a : min(a + cfg.batch_size, stop)]
                x, y = train.get_batch(idx)
                x = flip_batch(x, gen, cfg.hflip, cfg.vflip).to(device)
                loss = F.nll_loss(model(x), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            val_metrics = binary_metrics(predict(model, val, cfg.eval_batch_size, device), val.labels, positive)
            score = val_metrics["auprc"]
            improved = not math.isnan(score) and score > best_score
            if improved:
                best_score, best_epoch, best_val, stale = score, epoch, val_metrics, 0
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(ckpt))
            else:
                stale += 1
            rec = {"epoch": epoch, "train_loss": total / max(seen, 1),
                   "drawn_by_source": drawn_by_source(order[:stop], train.sources),
                   **{f"val_{k}": v for k, v in val_metrics.items()}, "best": improved, "seconds": round(time.perf_counter() - t0, 2)}
            log.append(rec)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if best_epoch == 0:
        raise RuntimeError(f"{run_dir}: validation AUPRC was never defined (does the validation set hold both classes?)")
    model.load_state_dict(load_file(str(ckpt)))
    return FitResult(best_epoch, best_val, len(log), time.perf_counter() - t0, log)
