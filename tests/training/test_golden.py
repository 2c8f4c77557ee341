"""Golden equality: the GAN paths train to the weights recorded before the recipe redesign.

tests/fixtures/golden/record_golden.py recorded them (quickstart DCGAN, WGAN-GP, conditional DCGAN with
DiffAugment and hinge loss, DP-SGD) with the pre-redesign trainer. Same torch build and CPU kernels:
the sha256 must match exactly. Other kernels: every tensor within 1e-4 (a recipe change moves them
by far more; see tests/fixtures/environment.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
sys.path[:0] = [str(GOLDEN), str(GOLDEN.parent)]
import record_golden as record  # noqa: E402
from environment import same_float_environment  # noqa: E402

RECORD = json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: thread count changes reduction order
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", sorted(record.CASES))
def test_weights_match_the_pre_redesign_trainer(case, tmp_path):
    weights = record.run_case(case, tmp_path)
    if same_float_environment(RECORD["environment"]):
        got = {m: record.state_hash(w) for m, w in weights.items()}
        assert got == RECORD["cases"][case]
    else:
        stored = load_file(str(GOLDEN / "golden_weights.safetensors"))
        for m, w in weights.items():
            for k, v in w.items():
                torch.testing.assert_close(v, stored[f"{case}/{m}/{k}"], atol=1e-4, rtol=1e-4, msg=f"{case} {m} {k}")
