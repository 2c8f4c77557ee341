"""Data-parallel training throughput on CPU: 1 process vs 2 gloo processes, and the all-reduce share.

Run: ``python benchmarks/bench_distributed.py [--size 64] [--width 32] [--batch 16] [--steps 20]``.

The script launches itself under ``torch.distributed.run`` (torchrun) for each setting and prints a
markdown table. Each worker builds breastgan's real Trainer (DDP-wrapped DCGAN, batch norm, the
default non-saturating loss) on a synthetic in-memory dataset and times whole training steps (one
D and one G update) between barriers. Then torch.profiler records a few more steps and the time
spent in all-reduce events (DDP's gradient buckets and the trainer's stop flag) is divided by the
profiled wall time: the communication share of a step.

Read the numbers for what they are on a small machine: with N cores in total, 2 processes x 1
thread compete for the same cores that 1 process x 2 threads would use, so data parallelism cannot
add compute here; it shows the overhead DDP adds, not the speed-up on 2 GPUs or 2 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(args: argparse.Namespace) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from breastgan.config import load_config
    from breastgan.data.base import DATASETS, DatasetInfo, TensorDataset
    from breastgan.distributed import init_distributed, shutdown
    from breastgan.training.trainer import Trainer

    @DATASETS.register("bench_synthetic")
    def bench_synthetic() -> TensorDataset:
        g = torch.Generator().manual_seed(0)
        n = 2048
        return TensorDataset(torch.rand(n, 1, args.size, args.size, generator=g), torch.zeros(n, dtype=torch.long),
                             DatasetInfo("bench", (args.size, args.size)), "bench")

    cfg = load_config({
        "data": {"source": {"dataset": "bench_synthetic"}},
        "model": {"generator": {"arch": "dcgan", "base_width": args.width}, "discriminator": {"arch": "dcgan", "base_width": args.width}},
        "train": {"max_steps": 10**6, "batch_size": args.batch, "device": "cpu", "progress": False},
    })
    ctx = init_distributed("cpu")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(cfg, Path(tmp), ctx)

            def step() -> None:
                tr.d_step()
                tr.batch_in_epoch += 1
                tr.g_step()
                if tr.batch_in_epoch >= tr.plan.batches_per_epoch:
                    tr._end_epoch()
                ctx.all_reduce_max(0.0, "stop flag")  # the trainer's per-step collective

            for _ in range(args.warmup):
                step()
            ctx.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            ctx.barrier()
            elapsed = time.perf_counter() - t0

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t1 = time.perf_counter()
                for _ in range(args.profile_steps):
                    step()
                prof_wall = time.perf_counter() - t1
            comm_us = sum(e.cpu_time_total for e in prof.key_averages()
                          if "all_reduce" in e.key.lower() or "allreduce" in e.key.lower())
            # other ranks' numbers are gathered so the table can show the slowest rank's share
            shares = ctx.all_gather_object(comm_us / 1e6 / prof_wall, "comm share")
            if ctx.is_main:
                print("RESULT " + json.dumps({
                    "world_size": ctx.world_size, "threads": torch.get_num_threads(), "per_process_batch": args.batch,
                    "global_batch": tr.plan.global_batch, "images_per_s": args.steps * tr.plan.global_batch / elapsed,
                    "step_ms": 1000 * elapsed / args.steps, "comm_share": shares,
                }), flush=True)
    finally:
        shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, threads: int, batch: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", __file__, "--worker", "--size", str(args.size), "--width", str(args.width),
           "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--profile-steps", str(args.profile_steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark run failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="DCGAN base_width of G and D")
    p.add_argument("--batch", type=int, default=16, help="per-process batch of the 2-process run")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    settings = [  # (processes, threads per process, per-process batch)
        (1, 1, args.batch), (1, 2, args.batch), (1, 2, 2 * args.batch), (2, 1, args.batch),
    ]
    load_before = os.getloadavg()[0]
    results = [_launch(n, t, b, args) for n, t, b in settings]
    # other work on the machine distorts CPU timings badly (OpenMP threads spin while waiting for a
    # busy core), so the load is part of the result
    print(f"DCGAN {args.size}px, base_width {args.width}, fp32 CPU, {os.cpu_count()} logical cores, "
          f"{platform.processor() or platform.machine()}, {args.steps} timed steps (1 D + 1 G update each); "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| processes x threads | batch per process | global batch | images/s | ms/step | all-reduce share of step |")
    print("|---|---|---|---|---|---|")
    for r in results:
        share = ", ".join(f"{100 * s:.1f}%" for s in r["comm_share"]) if r["world_size"] > 1 else "n/a"
        print(f"| {r['world_size']} x {r['threads']} | {r['per_process_batch']} | {r['global_batch']} | "
              f"{r['images_per_s']:.1f} | {r['step_ms']:.0f} | {share} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
