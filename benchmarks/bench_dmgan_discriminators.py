"""Time dm-GAN's N site discriminators on one machine: DiscriminatorBank.update per mode (issue 17).

One update = what N sites do per coordinator step: D_j step on (real_j, fake_j), then d g_loss_j /
d fake_j under the updated D_j (``breastgan.training.sites.bank``). Every mode starts from the same
weights; modes are interleaved within each repeat (loop, grouped, vmap, loop, ...) so the machine's
load hits them alike, and the median over repeats is reported with its ratio to loop (> 1: slower):
wall-clock ms and process CPU ms (all threads; less sensitive to other jobs on a shared machine).

    python benchmarks/bench_dmgan_discriminators.py --threads 1           # default: 64 px, N 10 and 4, batch 1 and 4 (34 s)
    python benchmarks/bench_dmgan_discriminators.py --sizes 256 --batches 1 --repeats 2
    python benchmarks/bench_dmgan_discriminators.py --device cuda --sizes 64,256   # untested here (no GPU lent)

On a CPU shared with other jobs pass ``--threads 1`` or set ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's
spinning at barriers while a partner thread is descheduled made the same update 10-200x slower here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from breastgan.losses.adversarial import LOSSES
from breastgan.training.sites.bank import BANK_MODES, DiscriminatorBank


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(n: int, batch: int, size: int, modes: list[str], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """mode -> (median wall ms, median CPU ms) of one update."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    patchgan = {"channels": 1, "ndf": args.ndf, "n_layers": 3, "norm": "instance"}
    banks = {m: DiscriminatorBank(n, patchgan, mode=m).to(device) for m in modes}
    state = next(iter(banks.values())).state_dict()
    opts = {}
    for m, bank in banks.items():
        bank.load_state_dict(state)
        opts[m] = torch.optim.Adam(bank.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss = LOSSES.build(args.loss, {})
    g = torch.Generator().manual_seed(args.seed)
    real = (torch.rand(n, batch, 1, size, size, generator=g) * 2 - 1).to(device)
    fake = (torch.rand(n, batch, 1, size, size, generator=g) * 2 - 1).to(device)
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.warmup + args.repeats):
        for m in modes:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            banks[m].update(opts[m], loss, real, fake)
            sync(device)
            if r >= args.warmup:
                wall[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
    return {m: (1000 * statistics.median(wall[m]), 1000 * statistics.median(cpu[m])) for m in modes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=ints, default=[10, 4], help="numbers of discriminators, comma-separated")
    p.add_argument("--batches", type=ints, default=[1, 4], help="per-site batch sizes")
    p.add_argument("--sizes", type=ints, default=[64], help="image sides (the paper: 256)")
    p.add_argument("--modes", default=",".join(BANK_MODES.names()), help="bank modes (loop first: ratios are to loop)")
    p.add_argument("--ndf", type=int, default=64, help="PatchGAN width (default PatchGAN: 64)")
    p.add_argument("--loss", default="lsgan")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes = ["loop"] + [m for m in modes if m != "loop"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, ndf {args.ndf}, "
          f"loss {args.loss}, median of {args.repeats} (after {args.warmup} warm-up)")
    print("| N | batch | size | " + " | ".join(f"{m} ms" for m in modes) + " | " + " | ".join(f"{m}/loop" for m in modes[1:])
          + " | " + " | ".join(f"{m} CPU ms" for m in modes) + " | " + " | ".join(f"{m}/loop CPU" for m in modes[1:]) + " |")
    print("|---" * (3 + 2 * (2 * len(modes) - 1)) + "|")
    for size in args.sizes:
        for n in args.n:
            for batch in args.batches:
                ms = measure(n, batch, size, modes, args)
                cells = []
                for k in (0, 1):  # wall, then CPU
                    cells += [f"{ms[m][k]:.0f}" for m in modes] + [f"{ms[m][k] / ms['loop'][k]:.2f}" for m in modes[1:]]
                print(f"| {n} | {batch} | {size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
