"""Generation split over processes: each rank writes a disjoint, deterministic share.

Image i depends only on (seed, i) (see latents.py; translations and reconstructions only on i), so
rank r writing blocks r, r+W, ... of ``batch_size`` indices produces exactly the files a single
process would. Rank 0 writes the manifest after all ranks finish, listing every file once. The
manifest does not record the world size, so the whole output folder is byte-identical whatever the
number of processes.
"""

from __future__ import annotations

from pathlib import Path

from breastgan.distributed import init_distributed, shutdown
from breastgan.generation.writer import check_output, output_manifest, write_images
from breastgan.utils.atomic import write_json_atomic


def generate_distributed(gen, out_dir, *, n: int, seed: int = 0, labels=None, fmt: str = "png", bit_depth: int = 16, batch_size: int = 64) -> int | None:
    """Write n images; returns the count on rank 0 (None on other ranks)."""
    check_output(gen.channels, fmt, bit_depth)  # before any process starts writing
    gen.check_capacity(n)
    ctx = init_distributed("cpu" if gen.device.type == "cpu" else "auto")
    try:
        if ctx.device != gen.device:
            # the model was loaded on the default CUDA device; each rank uses its own GPU (LOCAL_RANK)
            gen.to(ctx.device)
        blocks = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
        mine = blocks[ctx.rank :: ctx.world_size]
        records = []
        for a, b in mine:
            records += write_images(gen, out_dir, n=n, seed=seed, labels=labels, fmt=fmt, bit_depth=bit_depth,
                                    batch_size=batch_size, start=a, stop=b, write_manifest=False)
        everything = ctx.all_gather_object(records, "generated file lists")
        if ctx.is_main:
            files = sorted((r for part in everything for r in part), key=lambda r: r["index"])
            indices = [r["index"] for r in files]
            if indices != list(range(n)):  # every index written exactly once, or the manifest would lie
                raise RuntimeError(f"generation wrote {len(indices)} images for n={n}; expected indices 0..{n - 1} once each")
            write_json_atomic(Path(out_dir) / "manifest.json", output_manifest(gen, files, seed=seed, fmt=fmt, bit_depth=bit_depth, labels=labels))
            return len(files)
        return None
    finally:
        shutdown(ctx)
