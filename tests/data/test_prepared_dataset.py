"""The ``prepared`` dataset: the training contract on a folder written by ``prepare``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breastgan.data import build_dataset
from breastgan.data.base import ImageDataset
from breastgan.data.prepare import load_config, prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    rows = ["path,patient,label,box"]
    for i in range(12):
        yy, xx = np.mgrid[:160, :140]
        arr = np.where(xx ** 2 + (yy - 80) ** 2 < 120 ** 2, 100 + 10 * (i % 5), 2).astype(np.uint8)
        Image.fromarray(arr).save(d / f"im{i}.png")
        label = "normal" if i % 2 else "malignant"
        rows.append(f"im{i}.png,p{i // 2 if i < 8 else i},{label},{'' if i % 2 else '20 60 40 80'}")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("prep") / "ds"
    prepare(load_config(raw={
        "dataset": {"adapter": "csv", "args": {"csv": str(d / "m.csv")}}, "output": str(out), "workers": 1,
        "task": {"name": "patches", "args": {"size": 32, "min_side": 64, "margin_px": 8, "healthy_side": 64, "healthy_per_image": 1}},
        "splits": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "train_fraction": 0.5, "shards": {"column": "breast_area", "n": 2}},
    }))
    return out


def test_contract_and_batches(prepared):
    ds = build_dataset("prepared", {"path": str(prepared), "split": "train"})
    assert isinstance(ds, ImageDataset)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert isinstance(y, int) and ds.info.class_names == ("healthy", "lesion") and ds.info.image_size == (32, 32)
    xb, yb = ds.get_batch(torch.arange(len(ds)))
    assert xb.shape == (len(ds), 1, 32, 32) and torch.equal(yb, ds.labels)
    assert ds.fingerprint() == build_dataset("prepared", {"path": str(prepared), "split": "train"}).fingerprint()


def test_splits_subsets_and_shards_select_rows(prepared):
    full = build_dataset("prepared", {"path": str(prepared), "split": None})
    parts = [build_dataset("prepared", {"path": str(prepared), "split": s}) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(full) == 12
    sub = build_dataset("prepared", {"path": str(prepared), "split": "train", "train_subset_only": True})
    assert 0 < len(sub) < len(parts[0]) and sub.fingerprint() != parts[0].fingerprint()
    shards = [build_dataset("prepared", {"path": str(prepared), "split": "train", "shard": k}) for k in (0, 1)]
    assert sum(len(s) for s in shards) == len(parts[0])
    lesions = build_dataset("prepared", {"path": str(prepared), "split": None, "where": {"label": ["lesion"]}, "class_names": ["healthy", "lesion"]})
    assert len(lesions) == 6 and set(lesions.labels.tolist()) == {1}


def test_clear_errors(prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        build_dataset("prepared", {"path": str(tmp_path)})
    with pytest.raises(ValueError, match="no column 'grade'"):
        build_dataset("prepared", {"path": str(prepared), "label_column": "grade"})
    with pytest.raises(ValueError, match="not in class_names"):
        build_dataset("prepared", {"path": str(prepared), "class_names": ["healthy"]})
    with pytest.raises(Exception, match="unknown option"):
        build_dataset("prepared", {"path": str(prepared), "splitt": "train"})
