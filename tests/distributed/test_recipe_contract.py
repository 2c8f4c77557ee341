"""The loop with a recipe unlike the GAN: two generators, two discriminators, a scheduler, extra state,
two streams and a structure change (a module grows and the batch halves) at step 4.

- an uninterrupted run equals runs killed (SIGKILL) before and after the change and resumed;
- 2 gloo ranks x b equal 1 rank x 2b across the change;
- with train.eval + best_metric firing several times, 2 ranks finish and agree on the best step;
- a NaN injected on one rank only makes both ranks roll back to the same checkpoint;
- best checkpoints selected by SWD and by KID during training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import child_env, read_json, run, single_cmd, toy_config, torchrun_cmd

MODULES = ("g_a", "g_b", "d_a", "d_b", "g_a_ema", "g_b_ema")


def twin_config(path: Path, *, batch_size: int = 8, max_steps: int = 8, **train) -> Path:
    cfg = {
        "name": "twin", "recipe": {"name": "test_twin", "grow_at": 4},
        "data": {"source": {"dataset": "toy", "n": 64}},
        "train": {"max_steps": max_steps, "batch_size": batch_size, "log_every": 2, "checkpoint_every": 2, "keep_last": 20,
                  "sample_every": 1000, "grid_size": 4, "progress": False, "device": "cpu", **train},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    out = {}
    for m in MODULES:
        out.update({f"{m}.{k}": v for k, v in load_file(str(d / f"{m}.safetensors")).items()})
    return out


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twin")
    run(single_cmd("train", "--config", str(twin_config(root / "c.yaml")), "--run-dir", str(root / "full")))
    return root / "full"


def test_structure_change_grows_modules_and_halves_the_batch(uninterrupted):
    before = json.loads((uninterrupted / "checkpoints" / "step_00000002" / "meta.json").read_text())
    after = json.loads((uninterrupted / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert before["structure"] == {"stage": 0} and after["structure"] == {"stage": 1}
    assert before["effective_batch"] == 8 and after["effective_batch"] == 4
    assert after["modules"] == ["g_a", "g_b", "d_a", "d_b"] and after["ema_modules"] == ["g_a", "g_b"]
    w2, w6 = weights(uninterrupted, 2), weights(uninterrupted, 6)
    assert "g_a.refine.weight" not in w2 and "g_a.refine.weight" in w6 and "g_a_ema.refine.weight" in w6
    assert before["model"]["components"]["generator"]["args"]["grown"] is False and after["model"]["components"]["generator"]["args"]["grown"] is True
    state = torch.load(uninterrupted / "checkpoints" / "step_00000006" / "training_state.pt", weights_only=True)
    assert set(state["optimizers"]) == {"g", "d_a", "d_b"} and set(state["schedulers"]) == {"g"}
    assert state["schedulers"]["g"]["last_epoch"] == 6 and state["recipe"]["running"].item() != 0
    assert set(state["loop"]["streams"]) == {"a", "b"}
    assert state["loop"]["images_seen"] == 4 * 8 + 2 * 4  # 4 steps at batch 8, then 2 at batch 4
    assert read_json(uninterrupted / "summary.json")["images_seen"] == 4 * 8 + 4 * 4
    records = [json.loads(x) for x in (uninterrupted / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d_a", "loss_d_b", "loss_g", "lr/g"} <= set(records[-1])


def _kill_at(cfg: Path, run_dir: Path, step: int) -> None:
    proc = subprocess.Popen(single_cmd("train", "--config", str(cfg), "--run-dir", str(run_dir)), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = run_dir / "checkpoints" / f"step_{step:08d}" / "meta.json"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, f"run finished before step {step}: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "checkpoints" / "step_00000008").exists(), "the run was not interrupted"


@pytest.mark.parametrize("kill_after", [2, 6], ids=["before-change", "after-change"])
def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path, kill_after):
    # slow the killed run a little so SIGKILL lands between checkpoints, not after the end
    cfg = twin_config(tmp_path / "c.yaml")
    tree = yaml.safe_load(cfg.read_text())
    tree["recipe"]["pause_s"] = 0.25
    cfg.write_text(yaml.safe_dump(tree))
    _kill_at(cfg, tmp_path / "killed", kill_after)
    run(single_cmd("train", "--resume", str(tmp_path / "killed")))
    assert_same(weights(uninterrupted, 8), weights(tmp_path / "killed", 8))
    # the resumed run passed (or restored) the change: the latest checkpoint is grown
    assert json.loads((tmp_path / "killed" / "checkpoints" / "step_00000008" / "meta.json").read_text())["structure"] == {"stage": 1}


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_double_batch_across_the_change(uninterrupted, tmp_path):
    cfg = twin_config(tmp_path / "c2.yaml", batch_size=4)
    run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "two")), timeout=120)
    # 2 x 4 == 1 x 8: same data, same draws; float sums in another order (all-reduce) differ in the last bits
    assert_same(weights(uninterrupted, 8), weights(tmp_path / "two", 8), atol=2e-6)
    assert read_json(tmp_path / "two" / "checkpoints" / "step_00000008" / "meta.json")["effective_batch"] == 4


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\[rank\d+\]:\s?", "", text))


@pytest.mark.distributed
def test_two_ranks_with_in_training_evaluation_and_best_metric_finish_and_agree(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", batch_size=8, max_steps=12, checkpoint_every=4,
                     eval=[{"metric": "pixel_stats", "every": 3, "n": 16}], best_metric="pixel_stats/hist_w1")
    env = child_env(BREASTGAN_DIST_TIMEOUT="20")
    proc = run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "r")), timeout=90, env=env)
    out = _flat(proc.stdout + proc.stderr)
    claims = re.findall(r"rank (\d): best checkpoint step (\d+)", out)
    assert sorted(r for r, _ in claims) == ["0", "1"], out[-3000:]
    assert len({s for _, s in claims}) == 1
    best = read_json(tmp_path / "r" / "checkpoints" / "best.json")
    assert str(best["step"]) == claims[0][1] and best["step"] % 3 == 0
    records = [json.loads(x) for x in (tmp_path / "r" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in records if "pixel_stats/hist_w1" in r) == [3, 6, 9, 12]


@pytest.mark.distributed
def test_nan_on_one_rank_rolls_both_back_to_the_same_checkpoint(tmp_path):
    cfg = twin_config(tmp_path / "c.yaml", batch_size=4, nonfinite="rollback")
    tree = yaml.safe_load(cfg.read_text())
    tree["recipe"].update({"nan_rank": 1, "nan_iteration": 5})
    cfg.write_text(yaml.safe_dump(tree))
    proc = run(torchrun_cmd(2, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "r")), timeout=120)
    out = _flat(proc.stdout + proc.stderr)
    rolled = re.findall(r"d_a loss is (non-finite on another rank|nan) at step 5 .*?rolling back to checkpoint step (\d+)", out)
    assert sorted(kind for kind, _ in rolled) == ["nan", "non-finite on another rank"], out[-3000:]
    assert {s for _, s in rolled} == {"4"}
    assert read_json(tmp_path / "r" / "summary.json")["rollbacks"] == 1


class _SmallNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(x, 4)
        return torch.cat([x.flatten(1), x.std(dim=(2, 3))], dim=1)


@pytest.mark.parametrize("metric, options, best", [
    ("swd", {"descriptors_per_image": 16, "n_boot": 0}, "swd"),
    ("kid", {"subsets": 4, "subset_size": 16}, "kid"),
])
def test_best_checkpoint_by_swd_and_kid(tmp_path, metric, options, best):
    import breastgan

    ext = tmp_path / "small.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_SmallNet().eval()), str(ext))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import toy_cli  # noqa: F401  (registers the toy dataset)

    spec = {"metric": metric, "every": 2, "n": 16, **options}
    if metric == "kid":
        spec.update(extractor={"name": "torchscript", "path": str(ext), "resize_to": None}, cache_dir=str(tmp_path / "cache"))
    cfg = yaml.safe_load(toy_config(tmp_path / "c.yaml", batch_size=16, max_steps=8, checkpoint_every=100, keep_last=1,
                                    eval=[spec], best_metric=best).read_text())
    result = breastgan.train(cfg, run_dir=tmp_path / "r")
    records = [json.loads(x) for x in (result.run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    values = {r["step"]: r[f"{metric}/{metric}"] for r in records if f"{metric}/{metric}" in r}
    assert sorted(values) == [2, 4, 6, 8]
    chosen = read_json(result.run_dir / "checkpoints" / "best.json")
    assert chosen["value"] == pytest.approx(min(values.values())) and values[chosen["step"]] == pytest.approx(chosen["value"])
    kept = sorted(int(p.name[5:]) for p in (result.run_dir / "checkpoints").glob("step_*"))
    assert chosen["step"] in kept and 8 in kept  # keep_last 1 never prunes the best
    assert breastgan.load_generator(result.run_dir, checkpoint="best").sample(2, seed=0).shape == (2, 1, 32, 32)
