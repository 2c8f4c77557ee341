"""dm-GAN vs DCGAN vs CycleGAN vs single-code inversion on mini-MIAS (docs/experiments.md, issue 17).

Reads trained runs and writes the seed's Tables 1-3 (PSNR on the reconstruction protocol, KID/FID of
new images, time per epoch) as JSON and Markdown. Every number comes from this script's run:

    python experiments/dmgan_minimias.py --data prepared/minimias_dmgan_64 --dcgan runs/dcgan-minimias-64 \
        --dmgan runs/dmgan-cpu --cyclegan runs/cyclegan-dcgan2real --out runs/dmgan_experiment

PSNR protocol (the paper's: a reconstruction against its own input, MAX = 1 on [0, 1] images):
- single-code: one latent per image fitted to the DCGAN (breastgan.generation.inversion.fit_latents);
- G1 (mGANprior): 20 codes at the dm-GAN's layer, fitted by invert_multicode;
- dm-GAN: G2(G1(those codes)); on training images also with the codes dm-GAN fitted during training;
- CycleGAN: its A->B translator applied to G1's reconstruction (CycleGAN as the refiner instead of G2).
New images: n samples per model; KID and FID (Inception pool3) against the held-out test images, MS-SSIM
fake-fake (diversity), nearest-training distances vs held-out (memorisation), through breastgan.evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from breastgan.data.prepared import PreparedDataset
from breastgan.evaluation import evaluate
from breastgan.generation import load_generator
from breastgan.generation.inversion import fit_latents
from breastgan.generation.multicode_inversion import invert_multicode, psnr_db
from breastgan.run_dir import find_checkpoint


def stats(v: torch.Tensor) -> dict[str, float]:
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "n": int(v.numel())}


@torch.no_grad()
def in_batches(fn, x: torch.Tensor, b: int = 32) -> torch.Tensor:
    return torch.cat([fn(x[i : i + b]) for i in range(0, x.shape[0], b)])


def to01(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(-1, 1) + 1) / 2


def epoch_seconds(run: Path, images_per_epoch: int) -> dict[str, float] | None:
    """Seconds per epoch from the run's logged throughput (images_per_s of the primary stream)."""
    f = run / "logs" / "metrics.jsonl"
    if not f.is_file():
        return None
    rates = [json.loads(line).get("images_per_s") for line in f.read_text().splitlines() if line.strip()]
    rates = [r for r in rates if r]
    if not rates:
        return None
    rate = sorted(rates)[len(rates) // 2]
    return {"images_per_s_median": rate, "s_per_epoch": images_per_epoch / rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dcgan", type=Path, required=True)
    p.add_argument("--dmgan", type=Path, required=True)
    p.add_argument("--cyclegan", type=Path)
    p.add_argument("--dmgan-sampled", type=Path, help="a dm-GAN run trained with g1_input: sampled (new-image rows only)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--n-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    train = PreparedDataset(a.data, split="train", label_column=None).images
    test = PreparedDataset(a.data, split="test", label_column=None).images
    dcgan = load_generator(a.dcgan)
    dm = load_generator(a.dmgan)
    G = dm.models[0].eval()
    g1 = G.g1
    result: dict = {"data": str(a.data), "n_train": len(train), "n_test": len(test), "fit_steps": a.fit_steps,
                    "layer": g1.layer, "n_codes": g1.n_codes, "psnr": {}, "samples": {}, "time": {}}

    # -- Table 1: PSNR on the reconstruction protocol ---------------------------------------------------
    t0 = time.perf_counter()
    single = fit_latents(dcgan.models[0], test, steps=a.fit_steps, lr=0.05, restarts=1, seed=a.seed)
    rec_single = in_batches(lambda z: to01(dcgan.models[0](z, None)), single.codes)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = invert_multicode(g1, test, steps=a.fit_steps, optimizer="adam", lr=0.05, seed=a.seed, batch_size=64)
    t_multi = time.perf_counter() - t0
    idx = torch.arange(len(test))
    rec_g1 = in_batches(lambda i: to01(g1(fit.codes[i], fit.alphas[i])), idx)
    rec_dm = in_batches(lambda i: to01(G.refine(fit.codes[i], fit.alphas[i])), idx)
    rows = {"single-code inversion (DCGAN)": rec_single, "G1 multi-code inversion (mGANprior)": rec_g1, "dm-GAN G2(G1)": rec_dm}
    cg = load_generator(a.cyclegan) if a.cyclegan else None
    if cg is not None:
        if cg.kind != "translation":
            raise SystemExit(f"--cyclegan {a.cyclegan}: a translation run is needed, got kind {cg.kind!r}")
        rows["CycleGAN A->B on G1's reconstruction"] = cg.translate(rec_g1, "a2b")
    for name, rec in rows.items():
        v = psnr_db(rec, test)
        result["psnr"][name] = {"test_all": stats(v), "test_first5": stats(v[:5])}
    # the paper's own protocol: training images reconstructed by the trained dm-GAN from the codes it fitted
    ckpt = find_checkpoint(a.dmgan, "latest")
    codes = load_file(str(ckpt.path / "codes.safetensors"))
    # `train` is in the recipe's dataset order (the same prepared set and split), so code row i is image i
    tr = in_batches(lambda i: to01(G.refine(codes["codes"][i], codes["alphas"][i])), torch.arange(len(train)))
    v = psnr_db(tr, train)
    result["psnr"]["dm-GAN G2(G1) on its training images (paper's protocol)"] = {"train_all": stats(v), "train_first5": stats(v[:5])}
    v = codes["psnr_db"]
    result["psnr"]["G1 fit of the training images (during training)"] = {"train_all": stats(v), "train_first5": stats(v[:5])}
    result["time"]["fit_test_s"] = {"single": round(t_single, 1), "multi": round(t_multi, 1)}

    # -- Tables 2-3: new images --------------------------------------------------------------------------
    n = a.n_samples
    samples = {"DCGAN": dcgan.sample(n, seed=a.seed + 1), "dm-GAN (alpha_gaussian)": dm.sample(n, seed=a.seed + 1)}
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(a.seed + 1))
    samples["G1 alone, alpha_gaussian codes (no G2)"] = in_batches(lambda zz: to01(g1(*G.sample_codes(zz))), z)
    if a.dmgan_sampled:
        samples["dm-GAN trained on sampled codes (g1_input sampled)"] = load_generator(a.dmgan_sampled).sample(n, seed=a.seed + 1)
    if cg is not None:
        samples["CycleGAN A->B of DCGAN samples"] = cg.translate(samples["DCGAN"], "a2b")
    for name, imgs in samples.items():
        m = evaluate(test, imgs, metrics=["kid", "fid", "ms-ssim", "memorisation"], train=train, heldout=test, report=False,
                     n_boot=200, seed=a.seed, cache_dir=False)
        result["samples"][name] = m
    # dm-GAN's primary stream is shard 0 (every shard is drawn in parallel): an epoch over all shards = one pass of shard 0
    shard0 = json.loads((a.dmgan / "summary.json").read_text())["dmgan"]["shards"]["sizes"][0]
    for name, run, per_epoch in (("DCGAN", a.dcgan, len(train)), ("dm-GAN", a.dmgan, shard0),
                                 ("dm-GAN sampled", a.dmgan_sampled, shard0), ("CycleGAN", a.cyclegan, len(train))):
        if run is not None:
            result["time"][name] = epoch_seconds(run, per_epoch)
    (a.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({"psnr": result["psnr"], "time": result["time"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
