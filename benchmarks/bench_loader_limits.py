"""What a hostile model description costs the loader, against loading an honest package in the same run.

Run: ``python benchmarks/bench_loader_limits.py [--repeats 5]``.

Cases (each on a private copy of the schema-v1 package in tests/fixtures/legacy, a conditional
DCGAN with latent 16; every case is refused before any module is built):

- honest: the package as exported (the reference: hash check, plan, build, weights);
- huge-consistent: image_size 256, base_width 1024, max_width 4096, embed_dim 1024 with a manifest
  that agrees (1.04e9 parameters described; before issue 12 this took 18 s and 4.8 GB before the
  weights check refused it);
- billion-classes: architecture.args.num_classes 10^9 (refused by the class-count rule);
- run-billion-classes: a run's model.json with num_classes 10^9 and no class names to compare with
  (refused by the parameter bound, with the culprit argument searched on the meta device).

Prints the median wall time of each case, its ratio to the honest load, and the peak RSS growth.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "package_v1"


def _package(tmp: Path, name: str, change) -> Path:
    dst = tmp / name
    shutil.copytree(LEGACY, dst)
    m = json.loads((dst / "manifest.json").read_text())
    change(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _huge(m):
    m["architecture"]["args"].update(image_size=256, base_width=1024, max_width=4096, embed_dim=1024)
    m["output"].update(height=256, width=256)


def _run(tmp: Path) -> Path:
    from breastgan.models.registry import GENERATORS
    from breastgan.models.weights import state_dict_cpu
    from breastgan.run_dir import ComponentSpec, ModelFile, write_model_file

    args = {"image_size": 32, "latent_dim": 8, "base_width": 8}
    run = tmp / "run"
    run.mkdir()
    write_model_file(run, ModelFile(kind="noise", components={"generator": ComponentSpec(arch="dcgan", args=args, module="generator")},
                                    inputs={"latent": {"dim": 8}}, output={}, class_names=[]))
    ckpt = run / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    G = GENERATORS.get("dcgan")(**GENERATORS.entry("dcgan").validate_args(args).model_dump())
    save_file(state_dict_cpu(G), str(ckpt / "generator.safetensors"))
    torch.save({"step": 1}, ckpt / "training_state.pt")
    (ckpt / "meta.json").write_text(json.dumps({"step": 1, "modules": ["generator"], "ema_modules": []}))
    m = json.loads((run / "model.json").read_text())
    m["components"]["generator"]["args"]["num_classes"] = 10**9
    (run / "model.json").write_text(json.dumps(m))
    return run


def _time(fn, repeats: int) -> tuple[float, str]:
    times, outcome = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            fn()
            outcome = "loaded"
        except ValueError as exc:  # PackageError / GeneratorLoadError
            outcome = f"refused: {str(exc).split(': ', 1)[1][:90]}..."
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from breastgan.generation import load_generator
    from breastgan.sharing import load_package

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cases = {
            "honest": _package(tmp, "honest", lambda m: None),
            "huge-consistent": _package(tmp, "huge", _huge),
            "billion-classes": _package(tmp, "classes", lambda m: m["architecture"]["args"].update(num_classes=10**9)),
        }
        load_package(cases["honest"])  # warm-up: imports, first-call costs
        run = _run(tmp)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = {name: _time(lambda p=p: load_package(p), a.repeats) for name, p in cases.items()}
        results["run-billion-classes"] = _time(lambda: load_generator(run), a.repeats)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ref = results["honest"][0]
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {a.repeats} repeats, median")
    print("| case | time (ms) | ratio to honest load | outcome |")
    print("|---|---|---|---|")
    for name, (t, outcome) in results.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / ref:.2f} | {outcome} |")
    print(f"peak RSS growth over all cases: {(rss1 - rss0) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
