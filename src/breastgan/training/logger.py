"""Run logging: a JSONL file of every logged scalar, TensorBoard events, a text log, a progress bar.

Only the main process (rank 0) writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG = logging.getLogger("breastgan")


def get_logger() -> logging.Logger:
    if not LOG.handlers:
        if sys.stderr.isatty():
            LOG.addHandler(RichHandler(console=Console(stderr=True), show_path=False, markup=False))
        else:
            # a batch job, nohup or CI: plain one-line records (rich would wrap them at 80 columns)
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
    return LOG


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunLogger:
    def __init__(self, run_dir: Path | None, total_steps: int | None, progress: bool, start_step: int = 0):
        self.enabled = run_dir is not None
        self.log = get_logger()
        self._jsonl = None
        self._tb = None
        self._file_handler: logging.Handler | None = None
        self._progress: Progress | None = None
        self.total, self.start_step, self.t0 = total_steps, start_step, time.perf_counter()
        if not self.enabled:
            return
        logs = run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(logs / "metrics.jsonl", "a", buffering=1)
        self._file_handler = logging.FileHandler(logs / "train.log")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._file_handler)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; tolerate a stripped install
            self.log.warning("tensorboard is not installed: no TensorBoard events (JSONL log still written)")
        if progress and sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def image(self, tag: str, step: int, grid_chw) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, grid_chw, step)

    def progress_line(self, step: int, scalars: dict[str, Any], losses: dict[str, Any]) -> str:
        """``step 250/1500 (17%) | 141 img/s | ETA 0:02:31 | loss_d 1.2345 loss_g 0.9876 ...``"""
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if self.total and done > 0 else float("nan")
        total = f"/{self.total} ({100 * step / self.total:.0f}%)" if self.total else ""
        parts = [f"step {step}{total}", f"{scalars.get('images_per_s', float('nan')):.0f} img/s", f"ETA {_duration(eta)}"]
        parts.append("  ".join(f"{k} {float(v):.4g}" for k, v in losses.items()))
        return " | ".join(parts)

    def progress(self, step: int, scalars: dict[str, Any], losses: dict[str, Any]) -> None:
        """One readable line every log interval: on the terminal's progress bar, or as a plain log line
        (stderr and logs/train.log) when stderr is not a terminal (batch jobs, nohup, CI)."""
        if not self.enabled:
            return
        line = self.progress_line(step, scalars, losses)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=line.split(" | ", 3)[-1][:80])
            if self._file_handler is not None:  # the bar is on the terminal; the file still gets the line
                self._file_handler.handle(self.log.makeRecord(self.log.name, logging.INFO, __file__, 0, line, None, None))
        else:
            self.log.info(line)

    def advance(self, step: int, info: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._file_handler is not None:
            self.log.removeHandler(self._file_handler)
            self._file_handler.close()
