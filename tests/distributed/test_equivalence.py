"""2 processes x batch b train exactly what 1 process x batch 2b trains (up to float rounding).

Why it holds: the trainer draws every random number at the global batch size from one seeded
stream and each rank takes its slice, DDP averages the gradients of the two half-batches (equal to
the gradient of the mean loss over the full batch), and both sides start from the same weights.
What remains is the order of floating-point additions (per-rank partial sums, then the all-reduce),
so weights agree to ~1e-8 (WGAN-GP) and ~1e-6 (DCGAN: Adam divides by the root of tiny second
moments, which magnifies rounding in near-zero gradients). TOLERANCE leaves a margin, and the test
checks that the weights moved by far more than it, so the comparison is not vacuous. CPU runs are
deterministic, so the measured difference is the same on every run of a given machine.

Why not batch norm: BatchNorm normalises with statistics of the batch each process sees, b samples
with 2 processes and 2b with 1, so the two runs compute different functions by definition. The
per-sample norms used here (layer norm in D, instance norm in G) make each sample's output
independent of its batch mates. SyncBatchNorm would restore the equivalence, but torch implements
it for CUDA only (see test_sync_batchnorm_on_cpu_is_refused_clearly).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import latest_checkpoint, read_json, run, single_cmd, toy_config, torchrun_cmd

pytestmark = pytest.mark.distributed

TOLERANCE = 1e-5
STEPS = 6


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _initial_weights(run_dir) -> tuple[dict, dict]:
    """The weights the trainer starts from (it seeds torch with train.seed = 0, then builds G, then D)."""
    from breastgan.models.registry import DISCRIMINATORS, GENERATORS

    record = read_json(run_dir / "run.json")
    torch.manual_seed(0)
    g = GENERATORS.get(record["modules"]["generator"]["arch"])(**record["modules"]["generator"]["args"])
    d = DISCRIMINATORS.get(record["modules"]["discriminator"]["arch"])(**record["modules"]["discriminator"]["args"])
    return g.state_dict(), d.state_dict()


def _compare(two, one) -> None:
    c2, c1 = latest_checkpoint(two), latest_checkpoint(one)
    assert c2.name == c1.name == f"step_{STEPS:08d}"
    meta2 = read_json(c2 / "meta.json")
    assert meta2["world_size"] == 2 and meta2["effective_batch"] == read_json(c1 / "meta.json")["effective_batch"]
    g0, d0 = _initial_weights(one)
    for name, init in (("generator", g0), ("generator_ema", g0), ("discriminator", d0)):
        w2, w1 = load_file(str(c2 / f"{name}.safetensors")), load_file(str(c1 / f"{name}.safetensors"))
        diff = _max_diff(w2, w1)
        moved = _max_diff(w1, init)
        assert diff < TOLERANCE, f"{name}: 2x8 and 1x16 differ by {diff:.3g} (tolerance {TOLERANCE})"
        assert moved > 50 * TOLERANCE, f"{name}: weights moved only {moved:.3g} from init; the comparison would be vacuous"


def test_dcgan_two_processes_match_one_process_with_double_batch(dcgan_runs):
    """Non-saturating loss with label smoothing, DiffAugment and flips: every random draw is sliced per rank."""
    _compare(dcgan_runs["two"], dcgan_runs["one"])


def test_wgan_gp_two_processes_match_one_process_with_double_batch(tmp_path):
    """The gradient penalty's double backward goes through DDP; n_critic = 2 critic steps per G step."""
    cfg2 = toy_config(tmp_path / "two.yaml", arch="wgan_gp_critic", loss="wgan-gp", batch_size=8, n_critic=2)
    cfg1 = toy_config(tmp_path / "one.yaml", arch="wgan_gp_critic", loss="wgan-gp", batch_size=16, n_critic=2)
    run(torchrun_cmd(2, "train", "--config", str(cfg2), "--run-dir", str(tmp_path / "two")))
    run(single_cmd("train", "--config", str(cfg1), "--run-dir", str(tmp_path / "one")))
    _compare(tmp_path / "two", tmp_path / "one")


def test_sync_batchnorm_on_cpu_is_refused_clearly(tmp_path):
    cfg = toy_config(tmp_path / "cfg.yaml", sync_batchnorm=True)
    proc = run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")), check=False)
    assert proc.returncode != 0
    assert "train.sync_batchnorm needs CUDA" in proc.stderr + proc.stdout
