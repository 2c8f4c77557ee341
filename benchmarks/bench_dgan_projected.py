"""Seconds per generator step: DGAN-WP-TL (WGAN-GP, n_critic 5, batch 2) vs the projected variant (hinge, n_critic 1,
batch 8) on the same 64x64 generator, and images seen by the discriminator per second.

Run: ``python benchmarks/bench_dgan_projected.py [--size 64] [--steps 5] [--threads 1]``. Both use the study's CPU
widths (G 8x8x128; DGAN D custom path 32 -> 64 -> 128) and the EfficientNet-Lite0 wheel as the frozen branch. Each
step is the recipe's real work: n_critic discriminator updates (with the penalty through the frozen branch for
DGAN-WP-TL), one generator update, Adam. Prints a markdown table and the ratio (DGAN / projected) of seconds per
generator step and of real images per second; the reference is measured in the same run, so a loaded machine slows
both alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from breastgan.losses.gradient_penalty import gradient_penalty
from breastgan.models import DISCRIMINATORS, GENERATORS
from breastgan.training.augment import DiffAugment


def dgan_step(G, D, og, od, real_batches, gp_lambda=5.0):
    for real in real_batches:  # n_critic critic updates
        z = torch.randn(real.shape[0], 100)
        with torch.no_grad():
            fake = G(z)
        loss = D(fake).mean() - D(real).mean() + gp_lambda * gradient_penalty(D, real, fake, torch.rand(real.shape[0], 1, 1, 1))
        od.zero_grad(set_to_none=True)
        loss.backward()
        od.step()
    for p in D.parameters():
        p.requires_grad_(False) if p.requires_grad else None
    loss_g = -D(G(torch.randn(real_batches[0].shape[0], 100))).mean()
    og.zero_grad(set_to_none=True)
    loss_g.backward()
    og.step()
    for p in D.custom.parameters():
        p.requires_grad_(True)
    for p in D.head.parameters():
        p.requires_grad_(True)


def projected_step(G, D, og, od, real, aug):
    z = torch.randn(real.shape[0], 100)
    with torch.no_grad():
        fake = G(z)
    u = torch.rand(real.shape[0], DiffAugment.N_RANDOM)
    loss = torch.relu(1 - D(aug(real, u))).mean() + torch.relu(1 + D(aug(fake, torch.rand_like(u)))).mean()
    od.zero_grad(set_to_none=True)
    loss.backward()
    od.step()
    heads = list(D.heads.parameters())
    for p in heads:
        p.requires_grad_(False)
    loss_g = -D(aug(G(torch.randn(real.shape[0], 100)), torch.rand_like(u))).mean()
    og.zero_grad(set_to_none=True)
    loss_g.backward()
    og.step()
    for p in heads:
        p.requires_grad_(True)


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = a.size
    G1 = GENERATORS.build("dgan_wp_tl", {"image_size": s, "base_width": 128})
    D1 = DISCRIMINATORS.build("dgan_wp_tl", {"image_size": s, "widths": [32, 64, 128]})
    G2 = GENERATORS.build("dgan_wp_tl", {"image_size": s, "base_width": 128})
    D2 = DISCRIMINATORS.build("projected", {"image_size": s})
    adam = lambda m, lr, b: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr, betas=b)
    o1g, o1d, o2g, o2d = adam(G1, 1e-5, (0.5, 0.999)), adam(D1, 1e-5, (0.5, 0.999)), adam(G2, 2e-4, (0.0, 0.99)), adam(D2, 2e-4, (0.0, 0.99))
    aug = DiffAugment(["color", "translation", "cutout"], 0.125, 0.5)
    reals2 = [torch.rand(2, 1, s, s) * 2 - 1 for _ in range(5)]
    real8 = torch.rand(8, 1, s, s) * 2 - 1
    t1 = timed(lambda: dgan_step(G1, D1, o1g, o1d, reals2), a.steps)
    t2 = timed(lambda: projected_step(G2, D2, o2g, o2d, real8, aug), a.steps)
    ips1, ips2 = 10 / t1, 8 / t2  # real images the discriminator sees per second
    print(f"| variant | s / generator step | real images / s (D) |\n|---|---|---|")
    print(f"| DGAN-WP-TL (WGAN-GP, n_critic 5, batch 2) | {t1:.3f} | {ips1:.1f} |")
    print(f"| projected (hinge, n_critic 1, batch 8) | {t2:.3f} | {ips2:.1f} |")
    print(f"ratio DGAN / projected: {t1 / t2:.2f}x seconds per generator step; projected sees {ips2 / ips1:.2f}x the real images per second "
          f"({s}x{s}, {a.threads} thread(s), {a.steps} timed steps after one warm-up, torch {torch.__version__})")


if __name__ == "__main__":
    main()
