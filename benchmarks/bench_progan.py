"""Progressive GAN throughput per stage: breastgan's loop + progan recipe vs a plain PyTorch loop of the same networks.

For each stage (5x4 up to --max-stage) both run the same work per iteration: one WGAN-GP + drift D
update on a batch of reals (average-pooled to the stage), one G update, Adam (0, 0.99), G EMA; the
breastgan side is ``breastgan.train`` with the ``progan`` recipe fixed at that stage (data at the
stage's size, no growth), read from its own images/s log over the second half of the run (the first
half warms up); the plain loop times the same number of iterations after the same warm-up.
Ratio = breastgan / plain (target >= 0.95). Each stage runs in a fresh process, so its peak resident
memory (ru_maxrss of that process: Python + torch + both loops) is reported per stage.

On a GPU (``--device cuda``): fp32 and bf16 images/s per stage, peak CUDA memory per stage, peak memory
at 1280x1024 per batch size, and the projected time to show 15M images (the seed: ~52 h on 8 V100).

    python benchmarks/bench_progan.py                      # CPU, stages 0..5 (5x4 .. 160x128)
    python benchmarks/bench_progan.py --device cuda --max-stage 8 --widths default
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPU_WIDTHS = [64, 64, 64, 32, 16, 16, 16, 16, 16]  # configs/progan_mammo_cpu.yaml's


def stage_config(stage: int, batch: int, steps: int, widths, device: str, precision: str, root: Path) -> dict:
    h, w = 5 * 2**stage, 4 * 2**stage
    model = {"arch": "progan", "latent_dim": 128}
    if widths is not None:
        model["widths"] = widths
    return {
        "name": f"bench{stage}",
        "recipe": {"name": "progan", "start_stage": stage, "batch_sizes": [batch]},
        "data": {"source": {"dataset": "phantom_full", "n": max(4 * batch, 64), "size": [h, w]}, "hflip": False, "vflip": False},
        "model": {"generator": dict(model), "discriminator": {k: v for k, v in model.items() if k != "latent_dim"}},
        "loss": {"name": "wgan-gp", "gp_lambda": 10, "gp_target": 1, "drift": 0.001},
        "optim": {"lr_g": 0.0015, "lr_d": 0.0015, "betas": [0.0, 0.99]},
        "train": {"max_steps": steps, "log_every": steps // 2, "checkpoint_every": 10**6, "sample_every": 10**6, "grid_size": 4,
                  "progress": False, "device": device, "precision": precision, "channels_last": device == "cuda", "ema": {"decay": 0.999},
                  "deterministic": device != "cuda"},
        "output_dir": str(root),
    }


def plain_loop(stage: int, batch: int, steps: int, widths, device: str, precision: str) -> float:
    """The same networks and update rule in a plain loop; images/s over the second half."""
    import torch

    from breastgan.data.phantom_full import generate_full_phantom
    from breastgan.models.progan import ProGANDiscriminator, ProGANGenerator

    h, w = 5 * 2**stage, 4 * 2**stage
    kw = {"image_size": (h, w), "stage": stage, **({"widths": widths} if widths is not None else {})}
    torch.manual_seed(0)
    dev = torch.device(device)
    G, D = ProGANGenerator(latent_dim=128, **kw).to(dev), ProGANDiscriminator(**kw).to(dev)
    if device == "cuda":
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = ProGANGenerator(latent_dim=128, **kw).to(dev).requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0015, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=0.0015, betas=(0.0, 0.99))
    data, _ = generate_full_phantom(max(4 * batch, 64), (h, w), 0)
    data = data * 2 - 1
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device == "cuda" else torch.autocast("cpu", enabled=False)
    t0, done = None, 0
    for it in range(steps):
        if it == steps // 2:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, data.shape[0], (batch,))
        real = data[idx].to(dev)
        z = torch.randn(batch, 128, device=dev)
        with torch.no_grad(), amp:
            fake = G(z)
        with amp:
            d_real, d_fake = D(real), D(fake)
            loss = d_fake.float().mean() - d_real.float().mean() + 0.001 * (d_real.float() ** 2).mean()
        eps = torch.rand(batch, 1, 1, 1, device=dev)
        x_hat = (eps * real + (1 - eps) * fake.float()).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        loss = loss + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        D.requires_grad_(False)
        with amp:
            loss_g = -D(G(torch.randn(batch, 128, device=dev))).float().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.lerp_(p, 0.001)
        if t0 is not None:
            done += batch
    if device == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def one_stage(args) -> dict:
    """Runs in a child process: both loops for one stage (interleaved: plain, breastgan, plain)."""
    import torch

    import breastgan

    torch.set_num_threads(args.threads)
    widths = None if args.widths == "default" else CPU_WIDTHS
    out = {"stage": args.stage, "size": [5 * 2**args.stage, 4 * 2**args.stage], "batch": args.batch}
    # interleaved repeats (plain, breastgan, plain, ...): on a shared machine the load drifts between runs
    plain, ours = [], []
    for rep in range(args.repeats):
        plain.append(plain_loop(args.stage, args.batch, args.steps, widths, args.device, args.precision))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = stage_config(args.stage, args.batch, args.steps, widths, args.device, args.precision, Path(tmp))
            run = breastgan.train(cfg, run_dir=Path(tmp) / "r").run_dir
            recs = [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
            ours.append([r["images_per_s"] for r in recs if "images_per_s" in r][-1])
    plain.append(plain_loop(args.stage, args.batch, args.steps, widths, args.device, args.precision))
    out["breastgan_img_s"] = statistics.median(ours)
    out["plain_img_s"] = statistics.median(plain)
    out["ratio"] = out["breastgan_img_s"] / out["plain_img_s"]
    if args.device == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["device_name"] = torch.cuda.get_device_name()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-stage", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16, help="iterations per measurement (timed: the second half)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core CPU)")
    ap.add_argument("--widths", default="cpu", choices=["cpu", "default"], help="cpu: the CPU recipe's widths; default: the reference's 512..16")
    ap.add_argument("--precisions", default="fp32", help="comma list; on CUDA e.g. fp32,bf16")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats per stage; medians are reported")
    ap.add_argument("--stages", default=None, help="comma list of stages (default: 0..--max-stage)")
    ap.add_argument("--stage", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage is not None:
        print(json.dumps(one_stage(args)))
        return
    batches = {0: 16, 1: 16, 2: 16, 3: 16, 4: 8, 5: 8, 6: 8, 7: 4, 8: 4} if args.device == "cpu" else {0: 128, 1: 128, 2: 128, 3: 64, 4: 32, 5: 16, 6: 16, 7: 8, 8: 8}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for precision in args.precisions.split(","):
        stages = [int(x) for x in args.stages.split(",")] if args.stages else range(args.max_stage + 1)
        for stage in stages:
            cmd = [sys.executable, __file__, "--stage", str(stage), "--batch", str(batches[stage]), "--steps", str(args.steps), "--repeats", str(args.repeats),
                   "--device", args.device, "--threads", str(args.threads), "--widths", args.widths, "--precision", precision]
            res = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            res["precision"] = precision
            rows.append(res)
            print(f"stage {stage} {res['size'][0]}x{res['size'][1]} batch {res['batch']} {precision}: breastgan {res['breastgan_img_s']:.1f} img/s, "
                  f"plain {res['plain_img_s']:.1f} img/s, ratio {res['ratio']:.3f}, peak RSS {res['peak_rss_mib']:.0f} MiB"
                  + (f", peak CUDA {res['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in res else ""), flush=True)
    if args.device == "cuda" and args.max_stage == 8:
        for batch in (1, 2, 4, 8, 16):
            cmd = [sys.executable, __file__, "--stage", "8", "--batch", str(batch), "--steps", "4", "--device", "cuda", "--threads", str(args.threads),
                   "--widths", args.widths, "--precision", "bf16"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(f"1280x1024 bf16 batch {batch}: failed ({proc.stderr.strip().splitlines()[-1][:200]})")
                break
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"1280x1024 bf16 batch {batch}: peak CUDA {r['peak_cuda_gib']:.2f} GiB, {r['breastgan_img_s']:.1f} img/s")
    if args.device == "cuda" and rows:
        last = [r for r in rows if r["stage"] == args.max_stage]
        for r in last:
            # projection: 15M images at the final stage's rate is an upper bound (lower stages are faster)
            print(f"{r['device_name']} {r['precision']}: 15M images at {r['breastgan_img_s']:.1f} img/s = {15e6 / r['breastgan_img_s'] / 3600:.1f} h on one GPU (upper bound)")
    ratios = [r["ratio"] for r in rows]
    print(f"min ratio {min(ratios):.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
