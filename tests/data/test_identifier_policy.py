"""Issue 12, defect 9: one identifier policy for every adapter.

Before the fix the manifest's ``patient_id`` was whatever the adapter reported: a CSV's patient
column, CBIS-DDSM's ``P_00001``, INbreast's patient field, a VinDr study id, in clear text. Now every
adapter's ids pass through :class:`IdentifierPolicy` (keyed hash by default; clear only when asked).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from test_adapters_cbis_ddsm import cbis  # noqa: F401 - fixtures in the published layouts
from test_adapters_inbreast import inbreast  # noqa: F401
from test_adapters_vindr import vindr  # noqa: F401

from breastgan.data.adapters import ADAPTERS, default_data_root
from breastgan.data.prepare import load_config, prepare

KEY = "unit-test-key-0123456789abcdef"
IMAGES = {"name": "images", "args": {"segment": False, "crop_to_breast": False, "chest_wall": "none", "size": [64, 64], "write_masks": False}}


@pytest.fixture
def csv_dataset(tmp_path):
    root = tmp_path / "csvdata"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = [["path", "patient", "label"]]
    for i, (pid, label) in enumerate([("Jane Doe 1957-03-02", "normal"), ("Jane Doe 1957-03-02", "benign"), ("MRN-000123", "normal")]):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(root / f"im{i}.png")
        rows.append([f"im{i}.png", pid, label])
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def _data(name: str):
    root = default_data_root() / name
    if not root.is_dir():
        pytest.skip(f"{name} not found at {root} (set BREASTGAN_DATA)")
    return root


CASES = {  # adapter -> (fixture or data folder, adapter args, task, extra config)
    "csv": ("csv_dataset", lambda r: {"csv": str(r / "manifest.csv")}, IMAGES, {}),
    "cbis_ddsm": ("cbis", lambda r: {"root": str(r)},
                  {"name": "patches", "args": {"margin_px": 20, "min_side": 64, "size": 64, "chest_wall": "none"}}, {}),
    "inbreast": ("inbreast", lambda r: {"root": str(r)},
                 {"name": "patches", "args": {"margin_px": 10, "min_side": 64, "size": 32, "healthy_side": 64, "healthy_per_image": 1}}, {}),
    "vindr": ("vindr", lambda r: {"root": str(r)}, IMAGES, {}),
    "busi": ("busi", lambda r: {"root": str(r)}, IMAGES, {"limit": 6}),
    "minimias": ("mini-mias", lambda r: {"root": str(r)}, {"name": "patches", "args": {"size": 32, "healthy_per_image": 1}}, {"limit": 3}),
}


def _prepare(request, tmp_path, adapter, identifiers=None):
    where, args, task, extra = CASES[adapter]
    root = request.getfixturevalue(where) if where in ("csv_dataset", "cbis", "inbreast", "vindr") else _data(where)
    raw = {"dataset": {"adapter": adapter, "args": args(root)}, "output": str(tmp_path / f"out-{adapter}-{bool(identifiers)}"),
           "mode": "lenient", "workers": 1, "task": task, "splits": {"fractions": {"train": 1.0}}, **extra}
    if identifiers is not None:
        raw["identifiers"] = identifiers
    summary = prepare(load_config(raw=raw))
    out = tmp_path / f"out-{adapter}-{bool(identifiers)}"
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    clear = {r.patient_id for r in ADAPTERS.build(adapter, args(root)).records}
    return summary, out, rows, clear


@pytest.mark.parametrize("adapter", list(CASES))
def test_every_adapter_writes_keyed_pseudonyms_by_default(adapter, request, tmp_path, monkeypatch):
    monkeypatch.setenv("BREASTGAN_ID_KEY", KEY)
    summary, out, rows, clear = _prepare(request, tmp_path, adapter)
    assert rows, "the fixture must produce manifest rows"
    written = {r["patient_id"] for r in rows}
    assert not written & clear, f"{adapter}: clear patient ids in manifest.csv: {written & clear}"
    from breastgan.data.adapters.identifiers import key_fingerprint, pseudonym

    assert written <= {pseudonym(c, KEY.encode()) for c in clear}  # one pseudonym per patient: splits and DP units still work
    assert summary.identifiers == {"mode": "keyed_hash", "algorithm": "hmac-sha256/16hex", "key_fingerprint": key_fingerprint(KEY.encode())}
    for f in ("manifest.csv", "summary.json", "config.yaml", "preflight.csv"):
        assert KEY not in (out / f).read_text()  # the key itself is never written


def test_clear_text_only_when_asked(request, tmp_path, monkeypatch):
    monkeypatch.setenv("BREASTGAN_ID_KEY", KEY)
    summary, _, rows, clear = _prepare(request, tmp_path, "csv", identifiers={"mode": "clear"})
    assert {r["patient_id"] for r in rows} == clear == {"Jane Doe 1957-03-02", "MRN-000123"}
    assert summary.identifiers == {"mode": "clear"}


def test_keyed_hash_depends_on_the_key_and_a_short_key_is_refused(tmp_path, monkeypatch):
    from breastgan.data.adapters.identifiers import IdentifierPolicy, pseudonym

    a, b = pseudonym("P_00001", b"k" * 32), pseudonym("P_00001", b"j" * 32)
    assert a != b and len(a) == 16 and "P_00001" not in a
    key_file = tmp_path / "site.key"
    key_file.write_text("short")
    with pytest.raises(ValueError, match="identifiers.key_file: .* holds 5 bytes; a key needs at least 16"):
        IdentifierPolicy(key_file=key_file).key()
    monkeypatch.delenv("BREASTGAN_ID_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    first = IdentifierPolicy().key()  # per-user key, created once with mode 0600, then reused
    f = tmp_path / "cfg" / "breastgan" / "identifier.key"
    assert f.is_file() and (f.stat().st_mode & 0o777) == 0o600 and IdentifierPolicy().key() == first and len(first) == 64


def test_summary_json_records_the_policy(request, tmp_path, monkeypatch):
    monkeypatch.setenv("BREASTGAN_ID_KEY", KEY)
    _, out, _, _ = _prepare(request, tmp_path, "csv")
    assert json.loads((out / "summary.json").read_text())["identifiers"]["mode"] == "keyed_hash"
