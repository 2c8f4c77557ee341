"""dm-GAN end to end across sites: `breastgan train --sites` (the dmgan recipe) + two `breastgan site` processes.

The coordinator is the real training loop with the dmgan recipe (G1 on a tiny pretrained DCGAN, G2,
no discriminators, no images); each site holds its shard and its PatchGAN. Checked: both sides
checkpoint, the run generates, the coordinator's ledger holds only generated images, gradients and
scalars, and nothing it received equals a site's real image.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from breastgan.generation import load_generator
from breastgan.training.sites.transport import read_ledger, sha256_tensor
from breastgan.training.trainer import train
from test_sites import N_PER_SITE, cluster, real_images  # noqa: F401  (the fixture and the helpers)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_train_with_sites_coordinator_and_two_site_processes(cluster, tmp_path, mode):
    g1 = tmp_path / "g1"
    train({"name": "g1", "data": {"source": {"dataset": "phantom", "n": 32, "size": 32, "seed": 3}},
           "model": {"generator": {"arch": "dcgan", "base_width": 8, "max_width": 32, "latent_dim": 16},
                     "discriminator": {"arch": "dcgan", "base_width": 8}},
           "train": {"batch_size": 16, "max_steps": 2, "sample_every": 100, "checkpoint_every": 2, "progress": False}}, run_dir=g1)
    cfg = {"name": "dm-sites",
           "recipe": {"name": "dmgan", "g1": {"generator": str(g1), "layer": 2, "n_codes": 3}, "n_discriminators": 2},
           "model": {"generator": {"arch": "resnet_generator", "ngf": 8, "n_blocks": 1, "dropout": 0.5},
                     "discriminator": {"arch": "patchgan", "ndf": 8, "n_layers": 2}},
           "loss": {"name": "lsgan"},
           "train": {"batch_size": 2, "max_steps": 4, "log_every": 1, "sample_every": 100, "checkpoint_every": 2, "progress": False,
                     "grid_size": 4}}
    (tmp_path / "dm.yaml").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    cluster.site(0), cluster.site(1)
    cluster.spawn("coordinator", [sys.executable, "-m", "breastgan", "train", "--config", str(tmp_path / "dm.yaml"),
                                  "--run-dir", str(run), "--sites", f"127.0.0.1:{cluster.port}", "--num-sites", "2", "--sites-mode", mode])
    assert cluster.wait("coordinator", 240) == 0, cluster.dump()
    assert cluster.wait("site0", 60) == 0 and cluster.wait("site1", 60) == 0, cluster.dump()

    summary = json.loads((run / "summary.json").read_text())["dmgan"]
    assert summary["g1_input"] == "sampled" and summary["sites"]["sizes"] == {"0": N_PER_SITE, "1": N_PER_SITE}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    meta = json.loads((run / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert meta["modules"] == ["generator"]  # the coordinator holds no discriminator and no codes
    for j in (0, 1):
        assert (cluster.root / f"site{j}" / "checkpoint.pt").is_file()

    rows = read_ledger(run / "sites_ledger.jsonl")
    kinds = {(r["direction"], r["kind"]) for r in rows}
    assert {k for d, k in kinds if d == "sent"} <= {"generated_images", "control"}
    assert {k for d, k in kinds if d == "received"} <= {"grad_generated", "scalars", "hello"}
    assert ("received", "grad_generated") in kinds
    real = {sha256_tensor(x) for j in (0, 1) for x in real_images(cluster.data, j)}
    real |= {sha256_tensor(x * 2 - 1) for j in (0, 1) for x in real_images(cluster.data, j)}
    assert not any(r["sha256"] in real for r in rows)

    gen = load_generator(run)
    imgs = gen.sample(3, seed=0)
    assert imgs.shape == (3, 1, 32, 32) and torch.isfinite(imgs).all()
