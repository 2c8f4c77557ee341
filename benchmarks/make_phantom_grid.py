"""Render docs/images/phantom_grid.png: an 8x8 grid of phantom patches for the README.

Top four rows are healthy patches, bottom four rows lesion patches (masses and calcification
clusters), each row sorted by density. Run: ``python benchmarks/make_phantom_grid.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from breastgan.data.io import write_image
from breastgan.data.phantom import generate_phantom


def phantom_grid(rows: int = 8, cols: int = 8, size: int = 128, seed: int = 0, gap: int = 2) -> np.ndarray:
    """A (rows*size + gaps) x (cols*size + gaps) float image: healthy rows first, then lesion rows."""
    batch = generate_phantom(4 * rows * cols, size=size, seed=seed)
    healthy = torch.nonzero(batch.labels == 0).flatten()[: (rows // 2) * cols]
    lesion = torch.nonzero(batch.labels == 1).flatten()[: (rows - rows // 2) * cols]
    canvas = np.ones((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap), dtype=np.float32)
    for row_index, picks in enumerate(list(healthy.view(-1, cols)) + list(lesion.view(-1, cols))):
        picks = picks[torch.argsort(batch.density[picks], stable=True)]
        for col_index, patch_index in enumerate(picks.tolist()):
            top, left = row_index * (size + gap), col_index * (size + gap)
            canvas[top : top + size, left : left + size] = batch.images[patch_index, 0].numpy()
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/images/phantom_grid.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_image(args.out, phantom_grid(seed=args.seed), bit_depth=8)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
