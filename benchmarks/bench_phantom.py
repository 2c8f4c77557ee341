"""Phantom throughput: batched torch generation vs a naive one-patch-at-a-time numpy reference.

Run: ``python benchmarks/bench_phantom.py [--n 4096] [--size 128] [--threads 2]``.
The reference synthesises the same background (1/f^beta Gaussian field, sigmoid tissue mapping,
white noise, 16-bit quantisation) with numpy's FFT, one patch per call, so the ratio measures
what batching and vectorisation buy. It has no lesions, so it is compared with healthy-only
torch batches; the mixed (50% lesion) torch rate is printed as well.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from breastgan.data.phantom import FAT_LEVEL, GLAND_LEVEL, GLANDULAR_FRACTION, generate_phantom


def naive_patch(rng: np.random.Generator, size: int, beta: float, density: int, noise: float) -> np.ndarray:
    """One healthy patch, synthesised with numpy the straightforward way."""
    from scipy.special import ndtri

    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    amplitude = np.zeros_like(radius)
    amplitude[radius > 0] = radius[radius > 0] ** (-beta / 2)
    spectrum = amplitude * (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape))
    field = np.fft.irfft2(spectrum, s=(size, size))
    field = (field - field.mean()) / field.std()
    threshold = ndtri(1.0 - GLANDULAR_FRACTION[density - 1])
    tissue = 1.0 / (1.0 + np.exp(-(field - threshold) / 0.9))
    image = FAT_LEVEL[density - 1] + (GLAND_LEVEL[density - 1] - FAT_LEVEL[density - 1]) * tissue
    image = image + noise * rng.standard_normal(image.shape)
    return (np.round(np.clip(image, 0, 1) * 65535) / 65535).astype(np.float32)


def time_call(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="patches per torch batch")
    parser.add_argument("--n-naive", type=int, default=512, help="patches for the numpy reference")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    healthy = time_call(lambda: generate_phantom(args.n, size=args.size, lesion_fraction=0.0), args.repeats)
    mixed = time_call(lambda: generate_phantom(args.n, size=args.size, lesion_fraction=0.5), args.repeats)

    def naive() -> None:
        rng = np.random.default_rng(0)
        for i in range(args.n_naive):
            naive_patch(rng, args.size, 3.0, 1 + i % 4, 0.008)

    reference = time_call(naive, 1)
    healthy_rate, mixed_rate, naive_rate = args.n / healthy, args.n / mixed, args.n_naive / reference
    print(f"torch batched, healthy only  {healthy_rate:9.0f} patches/s  ({args.n} x {args.size}x{args.size})")
    print(f"torch batched, 50% lesions   {mixed_rate:9.0f} patches/s")
    print(f"numpy per-patch reference    {naive_rate:9.0f} patches/s  ({args.n_naive} patches, healthy)")
    print(f"speed-up (healthy, torch / numpy): {healthy_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
