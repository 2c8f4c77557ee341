"""Generation split over processes: each rank writes a disjoint, deterministic share.

Image i depends only on (seed, i) (see latents.py), so rank r writing blocks r, r+W, ... of
``batch_size`` indices produces exactly the files a single process would. Rank 0 writes the
manifest after all ranks finish, listing every file once. The manifest does not record the world
size, so the whole output folder is byte-identical whatever the number of processes.
"""

from __future__ import annotations

from pathlib import Path

from breastgan.distributed import init_distributed, shutdown
from breastgan.generation.writer import write_images
from breastgan.utils.atomic import write_json_atomic


def generate_distributed(gen, out_dir, *, n: int, seed: int = 0, labels=None, fmt: str = "png", bit_depth: int = 16, batch_size: int = 64) -> int | None:
    """Write n images; returns the count on rank 0 (None on other ranks)."""
    ctx = init_distributed("cpu" if gen.device.type == "cpu" else "auto")
    try:
        if ctx.device != gen.device:
            # the generator was loaded on the default CUDA device; each rank uses its own GPU (LOCAL_RANK)
            gen.models = [m.to(ctx.device) for m in gen.models]
            gen.device = ctx.device
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
            # same fields and order as writer.write_images' manifest, so 1 process and N agree byte for byte
            write_json_atomic(Path(out_dir) / "manifest.json", {
                "count": len(files), "seed": seed, "format": fmt, "bit_depth": bit_depth if fmt == "png" else 32,
                "value_range": [0.0, 1.0], "sources": gen.sources,
                "labels": labels if not hasattr(labels, "tolist") else labels.tolist(),
                "generator": {"arch": gen.meta.get("arch"), "args": gen.meta.get("args")}, "files": files,
            })
            return len(files)
        return None
    finally:
        shutdown(ctx)
