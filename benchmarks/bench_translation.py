"""CycleGAN step time (breastgan's recipe + loop vs a plain PyTorch loop) and translate throughput.

1. Step time. The reference loop is written here by hand with the same networks (breastgan's
   ResnetGenerator and PatchGAN classes, same widths) and the same losses written out (least
   squares with the reference's un-halved G term, cycle L1 x 10, identity L1 x 5, D loss halved, a
   50-image history buffer, one Adam per network pair), so the ratio measures breastgan's overhead
   (streams, flips/crops draws, buffer bookkeeping, finiteness checks, schedulers, logging). Each
   mode runs in its own subprocess. Target: speed ratio >= 0.95.
2. Translate throughput at 256x256 and 1024x1024: ``translate_images`` end to end (read 16-bit PNG,
   translate full frame, write 16-bit PNG, preview off) vs the bare forward pass of the same
   network on the same tensors, images/s and ratio.

    python benchmarks/bench_translation.py --steps 20 --size 64 --ngf 16 --blocks 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def nets(args):
    from breastgan.models.patchgan import PatchGAN
    from breastgan.models.resnet_generator import ResnetGenerator
    from breastgan.training.recipes.cyclegan import init_normal

    torch.manual_seed(0)
    g = lambda: init_normal(ResnetGenerator(1, args.ngf, args.blocks))  # noqa: E731
    d = lambda: init_normal(PatchGAN(1, args.ndf, 3))  # noqa: E731
    return g(), g(), d(), d()


def run_reference(args) -> float:
    import random

    g_ab, g_ba, d_a, d_b = nets(args)
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], 2e-4, betas=(0.5, 0.999))
    n = max(64, args.batch * 4)
    data_a, data_b = torch.rand(n, 1, args.size, args.size) * 2 - 1, torch.rand(n, 1, args.size, args.size) * 2 - 1
    pools: dict[str, list] = {"a": [], "b": []}

    def query(name, imgs):  # the reference's util/image_pool.py
        out, pool = [], pools[name]
        for im in imgs:
            if len(pool) < 50:
                pool.append(im.clone())
                out.append(im)
            elif random.random() > 0.5:
                i = random.randint(0, 49)
                out.append(pool[i].clone())
                pool[i] = im.clone()
            else:
                out.append(im)
        return torch.stack(out)

    mse = lambda x, t: ((x - t) ** 2).mean()  # noqa: E731
    t0 = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        j = (i * args.batch) % (n - args.batch)
        real_a, real_b = data_a[j : j + args.batch], data_b[j : j + args.batch]
        for p in [*d_a.parameters(), *d_b.parameters()]:
            p.requires_grad_(False)
        fake_b, fake_a = g_ab(real_a), g_ba(real_b)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        loss_g = (mse(d_b(fake_b), 1) + mse(d_a(fake_a), 1) + 10 * ((rec_a - real_a).abs().mean() + (rec_b - real_b).abs().mean())
                  + 5 * ((g_ab(real_b) - real_b).abs().mean() + (g_ba(real_a) - real_a).abs().mean()))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        for p in [*d_a.parameters(), *d_b.parameters()]:
            p.requires_grad_(True)
        pb, pa = query("b", fake_b.detach()), query("a", fake_a.detach())
        loss_d = 0.5 * (mse(d_b(real_b), 1) + mse(d_b(pb), 0)) + 0.5 * (mse(d_a(real_a), 1) + mse(d_a(pa), 0))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g.item(), loss_d.item()
    return (time.perf_counter() - t0) / args.steps


def run_breastgan(args) -> float:
    import breastgan

    n = max(64, args.batch * 4)
    cfg = {"recipe": {"name": "cyclegan", "domain_b": {"dataset": "phantom", "n": n, "size": args.size, "seed": 2}},
           "data": {"source": {"dataset": "phantom", "n": n, "size": args.size, "seed": 1}, "hflip": True, "vflip": False},
           "model": {"generator": {"arch": "resnet_generator", "ngf": args.ngf, "n_blocks": args.blocks},
                     "discriminator": {"arch": "patchgan", "ndf": args.ndf, "n_layers": 3}},
           "loss": {"name": "lsgan"},
           "train": {"batch_size": args.batch, "max_steps": args.warmup + args.steps, "log_every": 1, "sample_every": 10**6,
                     "checkpoint_every": 10**6, "progress": False, "deterministic": False, "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        breastgan.train(cfg, run_dir=f"{tmp}/run")
        times = [json.loads(x)["time"] for x in open(f"{tmp}/run/logs/metrics.jsonl") if "images_per_s" in x]
    return (times[args.warmup + args.steps - 1] - times[args.warmup - 1]) / args.steps


def translate_throughput(args, side: int, n: int) -> tuple[float, float]:
    import numpy as np

    from breastgan.data.io import write_image
    from breastgan.generation.kinds import LoadedTranslator
    from breastgan.generation.translate import translate_images

    g_ab = nets(args)[0].eval()
    gen = LoadedTranslator({"a2b": g_ab}, {"components": {}}, [], torch.device("cpu"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        imgs = [rng.random((side, side)).astype(np.float32) for _ in range(n)]
        os.makedirs(f"{tmp}/in")
        for i, im in enumerate(imgs):
            write_image(f"{tmp}/in/{i}.png", im, bit_depth=16)
        x = [torch.from_numpy(np.round(im * 65535) / 65535).float()[None, None] for im in imgs]
        with torch.no_grad():
            g_ab(x[0] * 2 - 1)  # warm-up
            t0 = time.perf_counter()
            for t in x:
                ((g_ab(t * 2 - 1).clamp(-1, 1) + 1) / 2)
            ref = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        translate_images(gen, "a2b", f"{tmp}/in", f"{tmp}/out", preview=0)
        ours = n / (time.perf_counter() - t0)
    return ref, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="training patch side for the step-time comparison")
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--ndf", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the modes this many times; the best of each is kept")
    ap.add_argument("--translate-n", type=int, nargs=2, default=[8, 2], metavar=("N256", "N1024"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"seconds_per_step": (run_reference if args.child == "reference" else run_breastgan)(args)}))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CycleGAN step: {args.size}x{args.size}, batch {args.batch}, "
          f"ResNet ngf {args.ngf} / {args.blocks} blocks, PatchGAN ndf {args.ndf} (70x70)")
    best: dict[str, float] = {}
    passthrough = [a for a in sys.argv[1:]]
    for _ in range(args.repeats):
        for mode in ("reference", "breastgan"):
            out = subprocess.run([sys.executable, __file__, *passthrough, "--child", mode], capture_output=True, text=True, check=True)
            s = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]
            best[mode] = min(best.get(mode, s), s)
    r, b = best["reference"], best["breastgan"]
    print(f"step time: reference {r * 1e3:.1f} ms, breastgan {b * 1e3:.1f} ms, speed ratio (ref / breastgan) {r / b:.3f}")
    for side, n in zip((256, 1024), args.translate_n):
        ref, ours = translate_throughput(args, side, n)
        print(f"translate {side}x{side} ({n} images, 16-bit PNG in/out, full frame): forward only {ref:.2f} img/s, "
              f"translate_images {ours:.2f} img/s, ratio {ours / ref:.3f}")


if __name__ == "__main__":
    main()
