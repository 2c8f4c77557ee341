"""End-to-end ``prepare`` on a mini-MIAS subset and on small broken fixtures (strict vs lenient)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from breastgan.data.adapters import default_data_root
from breastgan.data.io import read_image
from breastgan.data.patches import render_patch
from breastgan.data.preprocess import Box, segment_breast
from breastgan.data.prepare import PrepareError, load_config, prepare

MIAS = default_data_root() / "mini-mias"
BUSI = default_data_root() / "busi"
needs_mias = pytest.mark.skipif(not (MIAS / "Info.txt").is_file(), reason=f"mini-MIAS not found at {MIAS} (set BREASTGAN_DATA)")
needs_busi = pytest.mark.skipif(not (BUSI / "benign").is_dir(), reason=f"BUSI not found at {BUSI} (set BREASTGAN_DATA)")
# lesion images with circles, normal images, the unlocalised CIRC (mdb059) and a border case
MIAS_SUBSET = ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006", "mdb010", "mdb012", "mdb059", "mdb060", "mdb144", "mdb145"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def mias_prepared(tmp_path_factory):
    if not (MIAS / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {MIAS} (set BREASTGAN_DATA)")
    out = tmp_path_factory.mktemp("prep") / "mias"
    cfg = load_config(raw={
        "dataset": {"adapter": "minimias", "args": {"root": str(MIAS)}},
        "output": str(out), "workers": 2, "include": MIAS_SUBSET, "mode": "lenient",
        "task": {"name": "patches", "args": {"healthy_per_image": 2}},
    })
    return out, prepare(cfg)


@needs_mias
def test_mias_outputs_and_counts(mias_prepared):
    out, summary = mias_prepared
    for name in ("manifest.csv", "preflight.csv", "preflight.json", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "manifest.csv")
    lesion = [r for r in rows if r["label"] == "lesion"]
    healthy = [r for r in rows if r["label"] == "healthy"]
    # lesions with coordinates in the subset: 001, 002, 005 (x2), 010, 012, 144 (x2), 145 -> 9; mdb059 has none
    assert len(lesion) == 9
    normals = {"mdb003", "mdb004", "mdb006", "mdb060"}
    assert {r["image_id"] for r in healthy} == normals and len(healthy) == 2 * len(normals)
    assert summary.items == len(rows) and summary.excluded == 0
    assert any("mdb059" in s and "no location" in s for s in summary.skipped)
    pre = {r["image_id"]: r for r in read_rows(out / "preflight.csv")}
    assert pre["mdb059"]["status"] == "warning" and len(pre) == len(MIAS_SUBSET)
    assert json.loads((out / "summary.json").read_text())["counts_by_label"] == {"lesion": 9, "healthy": 8}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert Path(resolved["dataset"]["args"]["root"]).is_absolute()
    # patients (film pairs) never straddle splits
    by_patient: dict[str, set] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())


@needs_mias
def test_lesion_patches_centred_on_info_txt_lesion(mias_prepared):
    out, _ = mias_prepared
    info = {}
    for line in (MIAS / "Info.txt").read_text(encoding="latin-1").splitlines():
        p = line.split()
        if line.startswith("mdb") and len(p) == 7:
            info.setdefault(p[0], []).append((int(p[4]), 1023 - int(p[5]), int(p[6])))  # bottom-left origin
    for r in read_rows(out / "manifest.csv"):
        if r["label"] != "lesion":
            continue
        x, row, radius = info[r["image_id"]][int(r["lesion_index"])]
        x0, y0, x1, y1 = map(int, r["crop_box"].split())  # in source (unflipped) coordinates
        assert x1 - x0 == y1 - y0 >= 128
        assert x0 <= x - radius + 1 and x1 >= x + radius and y0 <= row - radius + 1 and y1 >= row + radius
        # centred unless the square was shifted to stay inside the 1024x1024 film
        if 0 < x0 and x1 < 1024:
            assert abs((x0 + x1) / 2 - (x + 0.5)) <= 1
        if 0 < y0 and y1 < 1024:
            assert abs((y0 + y1) / 2 - (row + 0.5)) <= 1
        # the stored patch is exactly that crop, flipped when the manifest says so
        src = read_image(MIAS / "images" / f"{r['image_id']}.png").pixels
        if r["flipped"] == "1":
            src, box = src[:, ::-1], Box(1024 - x1, y0, 1024 - x0, y1)
        else:
            box = Box(x0, y0, x1, y1)
        patch = read_image(out / r["file"]).pixels
        np.testing.assert_allclose(patch, render_patch(src, box, 128), atol=1 / 65535 + 1e-6)


@needs_mias
def test_healthy_patches_satisfy_background_rule_and_laterality(mias_prepared):
    out, _ = mias_prepared
    for r in read_rows(out / "manifest.csv"):
        src = read_image(MIAS / "images" / f"{r['image_id']}.png").pixels
        breast = segment_breast(src)
        x0, y0, x1, y1 = map(int, r["crop_box"].split())
        if r["label"] == "healthy":
            assert 1.0 - breast[y0:y1, x0:x1].mean() <= 0.4 + 1e-9
            assert float(r["background_fraction"]) <= 0.4
        # chest wall to the left after normalisation: right films (odd numbers here) were flipped
        assert r["flipped"] == ("1" if r["laterality"] == "R" else "0"), r["image_id"]


@needs_mias
def test_check_only_writes_preflight_and_no_manifest(tmp_path):
    cfg = load_config(raw={"dataset": {"adapter": "minimias", "args": {"root": str(MIAS)}}, "output": str(tmp_path / "chk"), "workers": 1, "limit": 4})
    s = prepare(cfg, check_only=True)
    assert s.check_only and s.inputs == 4 and s.items == 0
    assert (tmp_path / "chk" / "preflight.csv").is_file() and not (tmp_path / "chk" / "manifest.csv").exists()


@needs_busi
def test_busi_near_duplicates_share_a_split(tmp_path):
    # the exact duplicate (benign 433 / malignant 145), a near-duplicate pair across classes (benign 437 /
    # normal 34) and a handful of others
    include = ["benign_433", "malignant_145", "benign_437", "normal_034", "benign_001", "benign_002", "malignant_001", "normal_001"]
    cfg = load_config(raw={
        "dataset": {"adapter": "busi", "args": {"root": str(BUSI)}}, "output": str(tmp_path / "busi"), "workers": 1,
        "include": include, "task": {"name": "images", "args": {"segment": False, "chest_wall": "none", "size": [64, 64], "pad": "centre"}},
        "splits": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
    })
    s = prepare(cfg)
    rows = {r["image_id"]: r for r in read_rows(tmp_path / "busi" / "manifest.csv")}
    assert rows["benign_433"]["group"] == rows["malignant_145"]["group"] != ""
    assert rows["benign_433"]["split"] == rows["malignant_145"]["split"]
    assert rows["benign_437"]["group"] == rows["normal_034"]["group"] != ""
    assert rows["benign_437"]["split"] == rows["normal_034"]["split"]
    assert s.near_duplicate_groups >= 2
    m = read_image(tmp_path / "busi" / rows["benign_001"]["mask_file"]).pixels
    assert m.shape == (64, 64) and m.max() == 1.0 and read_image(tmp_path / "busi" / rows["benign_001"]["file"]).pixels.shape == (64, 64)


@pytest.mark.slow
@needs_busi
def test_busi_all_near_duplicate_groups_within_one_split(tmp_path):
    cfg = load_config(raw={
        "dataset": {"adapter": "busi", "args": {"root": str(BUSI)}}, "output": str(tmp_path / "busi"), "workers": 2,
        "task": {"name": "images", "args": {"segment": False, "chest_wall": "none", "size": [32, 32]}},
    })
    s = prepare(cfg)
    assert s.items == 780 and s.near_duplicate_groups > 100
    groups: dict[str, set] = {}
    for r in read_rows(tmp_path / "busi" / "manifest.csv"):
        if r["group"]:
            groups.setdefault(r["group"], set()).add(r["split"])
    assert groups and all(len(v) == 1 for v in groups.values())


# ---------------------------------------------------------------------------------------------
# bad input, on a generic CSV dataset built here


def grey(path: Path, h: int = 200, w: int = 160, mode: str = "L") -> Path:
    yy, xx = np.mgrid[:h, :w]
    arr = np.where((xx ** 2 + (yy - h / 2) ** 2) < (0.45 * h) ** 2, 140, 3).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def mask_png(path: Path, h: int, w: int, box: tuple[int, int, int, int] | None, mode: str = "L") -> Path:
    arr = np.zeros((h, w), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture()
def bad_dataset(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    grey(d / "ok.png")
    grey(d / "normal.png")
    mask_png(d / "ok_mask.png", 200, 160, (20, 90, 40, 110))
    grey(d / "rgba_mask_img.png")
    mask_png(d / "rgba_mask.png", 200, 160, (20, 90, 40, 110), mode="RGBA")
    trunc = grey(d / "truncated.png")
    trunc.write_bytes(trunc.read_bytes()[:60])
    grey(d / "size.png")
    mask_png(d / "size_mask.png", 100, 100, (10, 10, 20, 20))
    grey(d / "empty.png")
    mask_png(d / "empty_mask.png", 200, 160, None)
    grey(d / "outside.png")
    rows = [
        ("ok.png", "p1", "malignant", "ok_mask.png", "", "ok"),
        ("normal.png", "p2", "normal", "", "", "normal"),
        ("rgba_mask_img.png", "p3", "benign", "rgba_mask.png", "", "rgba"),
        ("truncated.png", "p4", "benign", "", "10 10 20 20", "truncated"),
        ("size.png", "p5", "benign", "size_mask.png", "", "size"),
        ("empty.png", "p6", "benign", "empty_mask.png", "", "empty"),
        ("outside.png", "p7", "benign", "", "500 500 520 520", "outside"),
        ("ok.png", "p8", "malignant", "ok_mask.png", "", "ok"),  # duplicate id
    ]
    with open(d / "manifest.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["path", "patient", "label", "mask", "box", "image_id"])
        wr.writerows(rows)
    return d


def bad_config(d: Path, mode: str, out: Path):
    return load_config(raw={
        "dataset": {"adapter": "csv", "args": {"csv": str(d / "manifest.csv")}}, "output": str(out), "mode": mode, "workers": 1,
        "task": {"name": "patches", "args": {"healthy_side": 64, "min_side": 64, "margin_px": 10, "healthy_per_image": 1}},
        "splits": {"fractions": {"train": 1.0}},
    })


def test_strict_mode_stops_at_first_problem_naming_the_file(bad_dataset, tmp_path):
    with pytest.raises(PrepareError, match=r"ok\.png.*duplicate image id 'ok'"):
        prepare(bad_config(bad_dataset, "strict", tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()  # nothing half-written


def test_lenient_mode_records_every_problem(bad_dataset, tmp_path):
    s = prepare(bad_config(bad_dataset, "lenient", tmp_path / "lenient"))
    pre = {(r["image_id"], r["status"]): r for r in read_rows(tmp_path / "lenient" / "preflight.csv")}
    status = {}
    for (image_id, st), r in pre.items():
        status.setdefault(image_id, []).append((st, r["problems"] + r["notes"]))
    assert status["ok"][0][0] == "ok" and any("duplicate image id" in p for _, p in status["ok"])
    assert status["rgba"][0][0] == "warning" and "RGBA" in status["rgba"][0][1]
    assert status["truncated"][0][0] == "error" and "truncated.png" in status["truncated"][0][1]
    assert status["size"][0][0] == "error" and "does not match" in status["size"][0][1]
    assert status["empty"][0][0] == "error" and "empty" in status["empty"][0][1]
    assert status["outside"][0][0] == "error" and "outside" in status["outside"][0][1]
    assert s.excluded == 5 and len(s.excluded_files) == 5
    reasons = " ".join(e["reason"] for e in s.excluded_files)
    for word in ("duplicate", "does not match", "empty", "outside", "truncated.png"):
        assert word in reasons
    rows = read_rows(tmp_path / "lenient" / "manifest.csv")
    assert sorted(r["image_id"] for r in rows) == ["normal", "ok", "rgba"]
    assert s.inputs == 8 and s.ok + s.warnings + s.excluded == s.inputs


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    raw = {"dataset": {"adapter": "minimias", "args": {"root": "x"}}, "output": str(tmp_path / "o")}
    with pytest.raises(ValueError, match="bogus"):
        load_config(raw={**raw, "bogus": 1})
    with pytest.raises(ValueError, match="unknown option"):
        load_config(raw={**raw, "task": {"name": "patches", "args": {"sizes": 3}}})
    cfg = load_config(raw=raw, overrides=["workers=1", "splits.train_fraction=0.5", "task.args.size=64"])
    assert cfg.workers == 1 and cfg.splits.train_fraction == 0.5 and cfg.task.args["size"] == 64


@needs_mias
def test_results_do_not_depend_on_worker_count(mias_prepared, tmp_path):
    out, _ = mias_prepared  # prepared with 2 workers
    cfg = load_config(raw={
        "dataset": {"adapter": "minimias", "args": {"root": str(MIAS)}},
        "output": str(tmp_path / "one"), "workers": 1, "include": MIAS_SUBSET, "mode": "lenient",
        "task": {"name": "patches", "args": {"healthy_per_image": 2}},
    })
    prepare(cfg)
    assert (tmp_path / "one" / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()
    for r in read_rows(out / "manifest.csv"):
        assert (tmp_path / "one" / r["file"]).read_bytes() == (out / r["file"]).read_bytes()


def test_cli_prepare_check_and_overrides(bad_dataset, tmp_path):
    import typer
    from typer.testing import CliRunner

    from breastgan.cli.prepare import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """breastgan (test app)"""

    register(app)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": {"adapter": "csv", "args": {"csv": str(bad_dataset / "manifest.csv")}}, "output": str(tmp_path / "cli"), "workers": 1,
        "task": {"name": "patches", "args": {"healthy_side": 64, "min_side": 64, "margin_px": 10}}, "splits": {"fractions": {"train": 1.0}},
    }))
    res = CliRunner().invoke(app, ["prepare", "--config", str(cfg)])
    assert res.exit_code == 1 and "duplicate image id" in res.output  # strict by default
    res = CliRunner().invoke(app, ["prepare", "--config", str(cfg), "--check", "--set", "mode=lenient"])
    assert res.exit_code == 2 and (tmp_path / "cli" / "preflight.csv").is_file()
    assert not (tmp_path / "cli" / "manifest.csv").exists()
    res = CliRunner().invoke(app, ["prepare", "--config", str(cfg), "--set", "mode=lenient"])
    assert res.exit_code == 0 and (tmp_path / "cli" / "manifest.csv").is_file()
