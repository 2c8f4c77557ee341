"""Issue 12: fuzzing every CLI argument that is a path.

Random names (brackets, spaces, unicode, bytes that are not UTF-8) for missing paths, empty folders
and files of random bytes: every command either succeeds or prints exactly one ``error:`` line,
never a traceback. Paths live under a fresh temporary folder, so nothing outside it is read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from breastgan.cli import _register_all, app

_register_all()
runner = CliRunner()

COMMANDS = [  # (args with P for a fuzzed input path and O for a fuzzed output path)
    ["train", "--config", "P"],
    ["train", "--resume", "P"],
    ["generate", "--run", "P", "--out", "O", "-n", "2"],
    ["invert", "--generator", "P", "--images", "P", "--out", "O", "--steps", "1"],
    ["site", "--config", "P", "--data", "P"],
    ["generate", "--package", "P", "--out", "O", "-n", "2"],
    ["prepare", "--config", "P", "--check"],
    ["evaluate", "--real", "P", "--fake", "P", "--out", "O", "--metrics", "ssim", "--no-report", "--no-cache"],
    ["utility", "--config", "P"],
    ["export", "--run", "P", "--out", "O"],
    ["verify", "P"],
    ["audit", "--run", "P", "--holdout", "P"],
    ["hub", "add", "P", "--hub", "O"],
    ["hub", "list", "--hub", "P"],
    ["sweep", "--config", "P", "--summarise"],
    ["translate", "--run", "P", "--direction", "a2b", "--input", "P", "--out", "O"],
]

# one path component: brackets, markup-like tags, spaces, unicode, and undecodable bytes (as argv
# delivers them on Linux: surrogate escapes)
ALPHABET = st.sampled_from(list("[]/{}^$*?.,:;=~ -_abcXYZ019") + ["é", "中", "🙂", "\u200b", "\udcff", "\udc80"])
NAME = st.lists(st.text(ALPHABET.filter(lambda c: c != "/"), min_size=1, max_size=16).filter(lambda s: s not in (".", "..")),
                min_size=1, max_size=3).map(lambda parts: "/".join(parts))
KIND = st.sampled_from(["missing", "empty folder", "random file", "file in folder"])


def _materialise(root: Path, name: str, kind: str, blob: bytes) -> Path:
    path = root / name
    try:
        if kind == "empty folder":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "random file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        elif kind == "file in folder":
            path.mkdir(parents=True, exist_ok=True)
            (path / "x.png").write_bytes(blob)
    except OSError:  # a name the file system refuses (too long, surrogates): then it is simply missing
        pass
    return path


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cmd=st.sampled_from(COMMANDS), name=NAME, kind=KIND, out_name=NAME, blob=st.binary(max_size=64))
def test_path_arguments_never_end_in_a_traceback(cmd, name, kind, out_name, blob):
    root = Path(tempfile.mkdtemp(prefix="bg-fuzz-"))
    old = os.getcwd()
    os.chdir(root)  # relative fuzzed paths resolve inside the temporary folder
    try:
        p = _materialise(root, name, kind, blob)
        args = [{"P": str(p.relative_to(root)), "O": f"out/{out_name}"}.get(a, a) for a in cmd]
        result = runner.invoke(app, args)
        out = result.output
        assert "Traceback" not in out, (args, out)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception), out)
        if result.exit_code != 0:
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (args, out)
            assert "internal error" not in errors[0], (args, errors[0])  # every path problem is a known, named error
    finally:
        os.chdir(old)
        shutil.rmtree(root, ignore_errors=True)
