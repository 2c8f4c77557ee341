"""Entry point the distributed tests launch under ``python -m torch.distributed.run``.

It registers ``toy``, a tiny deterministic in-memory dataset (every rank builds the same tensors
from a fixed seed) and the test recipe ``test_twin`` (twin_recipe.py), then runs the ordinary breastgan CLI with the remaining arguments, so the tests
exercise the same path a user's ``torchrun -m breastgan ...`` takes.

Test-only knobs (environment):
  BREASTGAN_TEST_PID_DIR     each rank writes its pid to ``rank<R>.pid`` there (the kill test)
  BREASTGAN_TEST_SKEW_RANK   this rank's copy of the data differs (the dataset-mismatch test)
``{rank}`` in an argument is replaced by the rank (per-rank config files for the mismatch test).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from pydantic import BaseModel

from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset

RANK = int(os.environ.get("RANK", "0"))


class ToyArgs(BaseModel):
    n: int = 64
    size: int = 32


@DATASETS.register("toy", args=ToyArgs, summary="tiny deterministic in-memory images for the distributed tests")
def toy(n: int = 64, size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=g) * 0.5
    # a smooth bright blob per image, so the data is not pure noise
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    images += 0.5 * torch.exp(-((xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2) * 8)[:, None]
    labels = torch.randint(0, 2, (n,), generator=g)
    if os.environ.get("BREASTGAN_TEST_SKEW_RANK") == str(RANK):
        images[0, 0, 0, 0] += 0.01  # one pixel: the kind of drift a stale copy on one node has
    return TensorDataset(images.clamp(0, 1), labels, DatasetInfo("toy", (size, size), class_names=("a", "b")), f"toy-{n}-{size}")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import twin_recipe  # noqa: F401  (registers the test recipe 'test_twin')

    pid_dir = os.environ.get("BREASTGAN_TEST_PID_DIR")
    if pid_dir:
        Path(pid_dir, f"rank{RANK}.pid").write_text(str(os.getpid()))
    sys.argv = ["breastgan"] + [a.replace("{rank}", str(RANK)) for a in sys.argv[1:]]
    from breastgan.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
