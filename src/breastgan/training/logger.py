"""Run logging: a JSONL file of every logged scalar, TensorBoard events, a text log, a progress bar.

Only the main process (rank 0) writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG = logging.getLogger("breastgan")


def get_logger() -> logging.Logger:
    if not LOG.handlers:
        LOG.addHandler(RichHandler(console=Console(stderr=True), show_path=False, markup=False))
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
    return LOG


class RunLogger:
    def __init__(self, run_dir: Path | None, total_steps: int | None, progress: bool, start_step: int = 0):
        self.enabled = run_dir is not None
        self.log = get_logger()
        self._jsonl = None
        self._tb = None
        self._file_handler: logging.Handler | None = None
        self._progress: Progress | None = None
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
        if progress:
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
