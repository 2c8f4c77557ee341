"""Export -> verify -> load round trip, and the loader's refusals (trust.md, loader rules)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sharing_helpers import read_manifest, resign, write_manifest

import breastgan
from breastgan.sharing import PackageError, load_package, verify_package
from breastgan.sharing import loader as loader_mod


# -- round trip ----------------------------------------------------------------------------------
def test_export_verify_load_sample_round_trip(exported, tiny_run):
    names = sorted(os.listdir(exported))
    assert names == ["README.md", "generator.safetensors", "manifest.json", "reference_samples.safetensors"]
    report = verify_package(exported)
    assert report.ok and all(v["match"] == "exact" for v in report.samples.values())
    pkg_gen = breastgan.load_generator(exported)  # routes through load_package
    run_gen = breastgan.load_generator(tiny_run)
    assert torch.equal(pkg_gen.sample(6, seed=5), run_gen.sample(6, seed=5))
    m = read_manifest(exported)
    assert m["schema_version"] == 2 and m["kind"] == "noise"
    assert m["components"] == {"generator": {"architecture": {"key": "dcgan", "args": m["components"]["generator"]["architecture"]["args"]},
                                             "weights": "generator.safetensors"}}
    assert m["components"]["generator"]["architecture"]["args"]["latent_dim"] == 16 and m["inputs"]["latent"]["dim"] == 16
    assert set(m["reference_samples"]["sha256"]) == {"seed_0", "seed_1", "seed_2"} and m["reference_samples"]["input_images"] is None
    assert m["training_data"] == {"dataset_kind": "phantom", "image_size": [32, 32], "n_images": 128,
                                  "n_patients": None, "n_per_class": {"healthy": 64, "lesion": 64}}
    assert m["privacy_audit"]["checks"] and m["privacy_audit"]["thresholds"]["max_mia_auc"] == 0.6


def test_package_holds_no_discriminator_paths_or_optimiser_state(exported, tiny_run):
    text = (exported / "manifest.json").read_text() + (exported / "README.md").read_text()
    assert str(tiny_run) not in text and str(tiny_run.parent) not in text and "/tmp" not in text
    assert "discriminator" not in text.lower() and "opt_d" not in text
    from safetensors import safe_open

    with safe_open(str(exported / "generator.safetensors"), "pt") as f:
        G = breastgan.load_generator(tiny_run).models[0]
        assert set(f.keys()) == set(G.state_dict())


def test_failed_gate_writes_nothing(tiny_run, holdout_images, tmp_path):
    from breastgan.sharing.audit import PrivacyGateError
    from breastgan.sharing.package import export_package

    out = tmp_path / "never"
    with pytest.raises(PrivacyGateError, match="max_mia_auc|must be"):
        # thresholds alone decide (n_permutations 0): a threshold of 0 fails any generator
        export_package(tiny_run, out, holdout=holdout_images, audit={"n_samples": 50, "n_boot": 0, "inversion": {"enabled": False},
                                                                     "n_permutations": 0, "thresholds": {"max_mia_auc": 0.0}})
    assert not out.exists() and not [p for p in tmp_path.iterdir()]
    with pytest.raises(PrivacyGateError, match="held-out"):
        export_package(tiny_run, out)  # no audit data and no override
    with pytest.raises(ValueError, match="override_reason"):
        export_package(tiny_run, out, force=True)


def test_forced_unaudited_export_is_recorded(tiny_run, tmp_path):
    from breastgan.sharing.package import export_package

    res = export_package(tiny_run, tmp_path / "p", force=True, override_reason="internal smoke test", medigan=True)
    m = read_manifest(tmp_path / "p")
    assert m["privacy_audit"] == {"status": "skipped", "forced": True, "override_reason": "internal smoke test",
                                  "checks": [], "thresholds": {}, "results": {}, "n": {}}
    assert "exported by override" in (tmp_path / "p" / "README.md").read_text()
    assert json.loads((tmp_path / "p" / "medigan_metadata.json").read_text())[res.manifest.name]["execution"]["package_name"] == "breastgan"
    assert verify_package(tmp_path / "p").ok


def test_onnx_export(tiny_run, tmp_path):
    from breastgan.sharing.package import export_package

    export_package(tiny_run, tmp_path / "p", force=True, override_reason="onnx test", onnx=True, onnx_exporter="torchscript")
    import onnx

    model = onnx.load(str(tmp_path / "p" / "generator.onnx"))
    assert [i.name for i in model.graph.input] == ["z"] and read_manifest(tmp_path / "p")["files"]["generator.onnx"]["role"] == "onnx"
    assert verify_package(tmp_path / "p").ok


def test_onnx_dynamo_exporter_names_the_missing_package(tiny_run, tmp_path):
    import importlib.util

    from breastgan.sharing.package import export_onnx

    if importlib.util.find_spec("onnxscript") is not None:
        pytest.skip("onnxscript is installed: the dynamo exporter is available")
    G = breastgan.load_generator(tiny_run).models[0]
    with pytest.raises(PackageError, match="onnxscript"):
        export_onnx(G, tmp_path / "g.onnx", exporter="dynamo")


# -- refusals ------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def test_malicious_pickle_as_weights_is_refused_and_never_runs(package, tmp_path):
    live = tmp_path / "live_marker"
    # the payload is real: unpickling it (in another process) runs it
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=pickle.dumps(_Payload(str(live))), check=True)
    assert live.exists()
    marker = tmp_path / "marker"
    (package / "generator.safetensors").write_bytes(pickle.dumps({"state_dict": _Payload(str(marker))}))
    resign(package)  # the attacker controls the manifest too: hashes match the pickle
    with pytest.raises(PackageError, match="not a safetensors file"):
        load_package(package)
    with pytest.raises(PackageError):
        verify_package(package)
    assert not marker.exists()


def test_torch_zip_checkpoint_as_weights_is_refused(package, tmp_path):
    torch.save({"w": torch.zeros(2)}, package / "generator.safetensors")
    resign(package)
    with pytest.raises(PackageError, match="safetensors"):
        load_package(package)


@pytest.mark.parametrize("target", ["generator.safetensors", "README.md", "reference_samples.safetensors"])
def test_one_changed_byte_is_a_hash_error_before_parsing(package, monkeypatch, target):
    calls = []
    monkeypatch.setattr(loader_mod, "parse_manifest", lambda obj: calls.append("manifest") or pytest.fail("parsed"))
    monkeypatch.setattr(loader_mod, "load_state_dict_checked", lambda *a: calls.append("weights") or pytest.fail("parsed"))
    f = package / target
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"{target}: sha256 mismatch"):
        load_package(package)
    assert calls == []


def test_changed_size_and_missing_file(package):
    with open(package / "README.md", "ab") as fh:
        fh.write(b"\n")
    with pytest.raises(PackageError, match="bytes, but manifest.json"):
        load_package(package)
    (package / "README.md").unlink()
    with pytest.raises(PackageError, match="missing"):
        load_package(package)


def test_unlisted_files_symlinks_and_directories_are_refused(package, tmp_path):
    (package / "extra.py").write_text("import os")
    with pytest.raises(PackageError, match="not listed.*extra.py"):
        load_package(package)
    (package / "extra.py").unlink()
    (package / "sub").mkdir()
    with pytest.raises(PackageError, match="not listed.*sub"):
        load_package(package)
    (package / "sub").rmdir()
    real = tmp_path / "elsewhere.md"
    real.write_bytes((package / "README.md").read_bytes())
    (package / "README.md").unlink()
    (package / "README.md").symlink_to(real)
    with pytest.raises(PackageError, match="symbolic link"):
        load_package(package)


V1_REJECTIONS = [  # the rules of schema v1, unchanged (run on the v1 package recorded with breastgan 0.1.0)
    (lambda m: m.update(loader="os:system"), "loader: unknown key"),
    (lambda m: m["architecture"].update(module="evil.py"), "architecture.module: unknown key"),
    (lambda m: m["architecture"].update(key="torch.nn.modules:Linear"), "architecture.key"),
    (lambda m: m["architecture"].update(key="os.system"), "architecture.key"),
    (lambda m: m["architecture"].update(key="stylegan9"), "not a breastgan generator"),
    (lambda m: m["architecture"]["args"].update(_target_="os.system"), "architecture.args"),
    (lambda m: m["architecture"]["args"].update(hook="builtins.exec"), "unknown option for 'dcgan'"),
    (lambda m: m["architecture"]["args"].update(latent_dim=17), "latent.dim is 16 but architecture.args give 17"),
    (lambda m: m.update(schema_version=3), "schema_version 3 is not supported"),
    (lambda m: m.update(format="medigan"), "format is 'medigan'"),
    (lambda m: m["files"].update({"../escape.bin": m["files"]["README.md"]}), "files"),
    (lambda m: m["files"]["generator.safetensors"].update(role="model_card"), "role 'weights'"),
    (lambda m: m["files"]["generator.safetensors"].update(role="codes"), "files.generator.safetensors.role"),  # a v2 role
    (lambda m: m["privacy_audit"].update(status="failed", forced=False), "without forced=true"),
    (lambda m: m.update(kind="noise"), "kind: unknown key"),
]

G2 = ("components", "generator", "architecture")


def _at(m, path):
    for p in path:
        m = m[p]
    return m


V2_REJECTIONS = [  # the same rules at their v2 places, and the v2 rules on kinds, components and inputs
    (lambda m: m.update(loader="os:system"), "loader: unknown key"),
    (lambda m: _at(m, G2).update(module="evil.py"), "components.generator.architecture.module: unknown key"),
    (lambda m: _at(m, G2).update(key="torch.nn.modules:Linear"), "components.generator.architecture.key"),
    (lambda m: _at(m, G2).update(key="os.system"), "components.generator.architecture.key"),
    (lambda m: _at(m, G2).update(key="stylegan9"), "components.generator.architecture.key 'stylegan9' is not a breastgan generator"),
    (lambda m: _at(m, G2)["args"].update(_target_="os.system"), "components.generator.architecture.args"),
    (lambda m: _at(m, G2)["args"].update(hook="builtins.exec"), "unknown option for 'dcgan'"),
    (lambda m: _at(m, G2)["args"].update(latent_dim=17), "inputs.latent.dim is 16 but components.generator.architecture.args give 17"),
    (lambda m: _at(m, G2)["args"].update(image_size=64), r"output.height/width is \(32, 32\) but components.generator.architecture.args give \(64, 64\)"),
    (lambda m: m["components"]["generator"].update(loader="x"), "components.generator.loader: unknown key"),
    (lambda m: m.update(schema_version=3), "schema_version 3 is not supported"),
    (lambda m: m.update(schema_version=1), "schema v1"),  # a v2 manifest is not a v1 one
    (lambda m: m.update(format="medigan"), "format is 'medigan'"),
    (lambda m: m.update(kind="gan3000"), "kind 'gan3000' is not a breastgan generator kind; available: inversion, noise, translation"),
    (lambda m: m.update(kind="os.system"), "kind"),
    (lambda m: m.update(kind="translation"), r"components: \['generator'\] is not a role of kind 'translation'"),
    (lambda m: m["components"].update(g2=m["components"].pop("generator")), r"\['g2'\] is not a role of kind 'noise'"),
    (lambda m: m["components"].clear(), "components"),
    (lambda m: m["inputs"].pop("latent"), "kind 'noise' needs inputs.latent"),
    (lambda m: m["inputs"].update(image={"channels": 1, "directions": ["a2b"]}), "inputs.image is not used by kind 'noise'"),
    (lambda m: m["inputs"].update(codes={"count": 2, "file": "codes.safetensors"}), "inputs.codes is not used by kind 'noise'"),
    (lambda m: m["inputs"].update(latent_file="x"), "inputs.latent_file: unknown key"),
    (lambda m: m["components"]["generator"].update(weights="README.md"), "components.generator.weights: 'README.md' is not listed in files with role 'weights'"),
    (lambda m: m["components"]["generator"].update(weights="../g.safetensors"), "components.generator.weights"),
    (lambda m: m["files"]["generator.safetensors"].update(role="model_card"), "is not listed in files with role 'weights'"),
    (lambda m: m["files"]["generator.safetensors"].update(role="codes"), "is not listed in files with role 'weights'"),
    (lambda m: m["files"]["README.md"].update(role="weights"), "files.README.md: a weights file that no component names"),
    (lambda m: m["files"]["../escape.bin"] if False else m["files"].update({"../escape.bin": m["files"]["README.md"]}), "files"),
    (lambda m: m["reference_samples"]["sha256"].update(seed_9=m["reference_samples"]["sha256"].pop("seed_0")), "reference_samples.sha256: keys"),
    (lambda m: m["reference_samples"]["sha256"].update({"../x": "0" * 64}), "reference_samples.sha256"),
    (lambda m: m["reference_samples"].update(input_images="breastgan-synthetic-v1"), "kind 'noise' takes no input images"),
    (lambda m: m["privacy_audit"].update(status="failed", forced=False), "without forced=true"),
    (lambda m: m.update(architecture=m["components"]["generator"]["architecture"]), "architecture: unknown key"),
]


@pytest.mark.parametrize("version, mutate, message", [("v1", *r) for r in V1_REJECTIONS] + [("v2", *r) for r in V2_REJECTIONS])
def test_manifest_rejections(request, version, mutate, message):
    package = request.getfixturevalue("package_v1" if version == "v1" else "package")
    m = read_manifest(package)
    mutate(m)
    write_manifest(package, m)
    with pytest.raises(PackageError, match=message):
        load_package(package)


def test_consistency_is_checked_before_any_module_is_built(package, package_v1, monkeypatch):
    from breastgan.generation import kinds

    monkeypatch.setattr(kinds.PlannedComponent, "build", lambda self: pytest.fail("a module was built before the manifest was checked"))
    for pkg, path in ((package, ("components", "generator", "architecture", "args")), (package_v1, ("architecture", "args"))):
        m = read_manifest(pkg)
        _at(m, path).update(latent_dim=17)
        write_manifest(pkg, m)
        with pytest.raises(PackageError, match="latent.dim is 16 but .*architecture.args give 17"):
            load_package(pkg)
    m = read_manifest(package)
    _at(m, ("components", "generator", "architecture", "args")).update(latent_dim=16)
    m["labels"] = {"conditional": True, "class_names": ["healthy", "lesion"]}
    write_manifest(package, m)
    with pytest.raises(PackageError, match=r"labels.class_names \(count\) is 2 but components.generator.architecture.args give 0"):
        load_package(package)


def test_v2_weights_file_without_a_component_is_refused(package):
    (package / "spare.safetensors").write_bytes((package / "generator.safetensors").read_bytes())
    m = read_manifest(package)
    m["files"]["spare.safetensors"] = dict(m["files"]["generator.safetensors"])
    resign(package, m)
    with pytest.raises(PackageError, match="files.spare.safetensors: a weights file that no component names"):
        load_package(package)


def test_duplicate_keys_nan_and_oversize_manifest(package):
    raw = (package / "manifest.json").read_text()
    (package / "manifest.json").write_text('{"format": "x", ' + raw.strip()[1:])
    with pytest.raises(PackageError, match="appears twice"):
        load_package(package)
    (package / "manifest.json").write_text(raw.replace('"dim": 16', '"dim": NaN'))
    with pytest.raises(PackageError, match="NaN"):
        load_package(package)
    (package / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(PackageError, match="over the"):
        load_package(package)
    (package / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(PackageError, match="nested|JSON"):
        load_package(package)


def test_wrong_shapes_and_nan_weights_are_refused(package, tiny_run):
    G = breastgan.load_generator(tiny_run).models[0]
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    first = next(k for k, v in sd.items() if v.is_floating_point())
    sd[first][...] = float("nan")
    save_file(sd, str(package / "generator.safetensors"))
    resign(package)
    with pytest.raises(PackageError, match="NaN/Inf"):
        load_package(package)
    sd[first] = torch.zeros(3, 3)
    save_file(sd, str(package / "generator.safetensors"))
    resign(package)
    with pytest.raises(PackageError, match="shape"):
        load_package(package)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in G.state_dict().items()}
    save_file(sd, str(package / "generator.safetensors"))
    resign(package)
    with pytest.raises(PackageError, match="dtype F64"):
        load_package(package)


def test_verify_detects_weights_that_do_not_reproduce_the_references(package, tiny_run):
    G = breastgan.load_generator(tiny_run).models[0]
    sd = {k: (v + 0.05 if v.is_floating_point() else v) for k, v in G.state_dict().items()}
    save_file(sd, str(package / "generator.safetensors"))
    resign(package)
    load_package(package)  # a well-formed package...
    report = verify_package(package)
    assert not report.ok and {v["match"] for v in report.samples.values()} == {"mismatch"}  # ...that is not the published model


def test_pinned_manifest_hash(exported):
    import hashlib

    digest = hashlib.sha256((exported / "manifest.json").read_bytes()).hexdigest()
    load_package(exported, expected_manifest_sha256=digest)
    with pytest.raises(PackageError, match="pinned"):
        load_package(exported, expected_manifest_sha256="0" * 64)


# -- fuzzing -------------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@pytest.fixture(scope="module")
def fuzz_pkg(exported, tmp_path_factory):
    import shutil

    dst = tmp_path_factory.mktemp("fuzz") / "pkg"
    shutil.copytree(exported, dst)
    return dst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_fail_only_with_package_errors(fuzz_pkg, exported, data):
    original = read_manifest(exported)
    m = json.loads(json.dumps(original))
    paths = list(_paths(m))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "add", "delete"]))
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        try:
            if not path:
                m = data.draw(JSON)
                break
            if action == "replace":
                parent[path[-1]] = data.draw(JSON)
            elif action == "add" and isinstance(parent, dict):
                parent[data.draw(st.text(max_size=8))] = data.draw(JSON)
            elif isinstance(parent, dict):
                del parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            pass
        paths = list(_paths(m))
    (fuzz_pkg / "manifest.json").write_text(json.dumps(m))
    try:
        load_package(fuzz_pkg)
    except PackageError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_fuzzed_manifest_bytes_fail_cleanly(fuzz_pkg, raw):
    (fuzz_pkg / "manifest.json").write_bytes(raw)
    with pytest.raises(PackageError):
        load_package(fuzz_pkg)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=4096), header=st.dictionaries(st.text(max_size=10), JSON, max_size=4))
def test_fuzzed_weights_fail_cleanly(fuzz_pkg, exported, blob, header):
    import struct

    head = json.dumps(header).encode()
    candidates = [blob, struct.pack("<Q", len(head)) + head + blob]
    for weights in candidates:
        (fuzz_pkg / "generator.safetensors").write_bytes(weights)
        resign(fuzz_pkg, read_manifest(exported))
        with pytest.raises(PackageError):
            load_package(fuzz_pkg)
