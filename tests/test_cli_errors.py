"""Issue 12, defects 1 and 2: every command ends a failure with one plain ``error:`` line.

Messages hold user paths and backend text with square brackets; printed as rich markup they made
the handler itself raise ``MarkupError`` (``[/oops]``) or silently rewrote them (``[bold]``).
``breastgan evaluate`` was not behind the handler at all. ``--debug`` / ``BREASTGAN_DEBUG=1`` show
the traceback instead.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastgan.cli import _register_all, app
from breastgan.cli.common import friendly_errors

_register_all()
runner = CliRunner()

# every command that takes a path, with one bracketed path in it (P = missing input, O = output)
COMMANDS = {
    "train --config": ["train", "--config", "P"],
    "train --resume": ["train", "--resume", "P"],
    "generate --run": ["generate", "--run", "P", "--out", "O"],
    "generate --package": ["generate", "--package", "P", "--out", "O"],
    "prepare": ["prepare", "--config", "P"],
    "evaluate": ["evaluate", "--real", "P", "--fake", "P", "--out", "O"],
    "utility": ["utility", "--config", "P"],
    "export": ["export", "--run", "P", "--out", "O"],
    "verify": ["verify", "P"],
    "audit": ["audit", "--run", "P", "--holdout", "P"],
    "hub add": ["hub", "add", "P", "--hub", "O"],
    "hub info": ["hub", "info", "P", "--hub", "O"],
    "sweep": ["sweep", "--config", "P"],
    "translate": ["translate", "--run", "P", "--direction", "a2b", "--input", "P", "--out", "O"],
}
BRACKETED = ["[/oops].yaml", "run [bold]x", "a[/__w/pytorch/pair.cc:561]b", "^{0,63}$[red]"]


def one_error_line(result, must_contain: str | None = None) -> str:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # the handler never raises
    out = result.output
    assert "Traceback" not in out and "MarkupError" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    if must_contain is not None:
        assert must_contain in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("weird", BRACKETED, ids=["close-tag", "bold", "backend", "regex"])
def test_bracketed_path_prints_one_verbatim_error_line(name, weird, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [{"P": weird, "O": f"out {weird}"}.get(a, a) for a in COMMANDS[name]]
    result = runner.invoke(app, args)
    line = one_error_line(result)
    assert weird in line or f"out {weird}" in line, line  # printed as given: nothing eaten by markup


def test_success_messages_keep_brackets(tmp_path, capsys):
    # the line after success ("wrote N images to <out>") went through markup too
    from breastgan.cli.common import err_console

    err_console.print("wrote 2 images to [/oops]/[bold]x")
    assert "wrote 2 images to [/oops]/[bold]x" in capsys.readouterr().err


def test_backend_message_with_brackets_and_undecodable_bytes(capsys):
    from breastgan.cli.common import print_error

    print_error("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer")
    print_error("pattern '^{0,63}$' and file " + b"bad\xff[x].png".decode("utf-8", "surrogateescape"))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer"
    assert err[1] == "error: pattern '^{0,63}$' and file bad\\udcff[x].png"


def test_os_error_names_the_file_and_unexpected_errors_say_internal(tmp_path):
    @friendly_errors
    def reads(path):
        open(path)  # noqa: SIM115

    @friendly_errors
    def breaks():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(SystemExit) as e:
        reads(str(tmp_path / "[x]" / "missing.png"))
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        breaks()
    assert e.value.code == 1


def _images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        Image.fromarray((rng.random((s, s)) * 255).astype(np.uint8)).save(folder / f"i{i}.png")
    return folder


def _evaluate_inputs(tmp_path):
    real = _images(tmp_path / "real", [32] * 4)
    zero = _images(tmp_path / "zero [1]", [32, 32])
    (zero / "z.png").write_bytes(b"")
    trunc = _images(tmp_path / "trunc", [32, 32])
    data = (real / "i0.png").read_bytes()
    (trunc / "t.png").write_bytes(data[: len(data) // 2])
    mixed = _images(tmp_path / "mixed", [32, 48])
    (tmp_path / "empty").mkdir()
    return real, {"zero-byte": (zero, "z.png"), "truncated": (trunc, "t.png"), "mixed sizes": (mixed, "mixed"), "empty": (tmp_path / "empty", "empty")}


def test_evaluate_bad_inputs_end_in_one_error_line(tmp_path):
    real, cases = _evaluate_inputs(tmp_path)
    for what, (folder, named) in cases.items():
        result = runner.invoke(app, ["evaluate", "--real", str(real), "--fake", str(folder), "--out", str(tmp_path / f"out-{what}"),
                                     "--metrics", "ssim", "--no-report", "--no-cache"])
        one_error_line(result, must_contain=named)


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    cfg = str(tmp_path / "[/oops].yaml")
    quiet = subprocess.run([sys.executable, "-m", "breastgan", "train", "--config", cfg], capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and f"error: config file not found: {cfg}" in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "breastgan", "--debug", "train", "--config", cfg], capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr
    env = subprocess.run([sys.executable, "-m", "breastgan", "train", "--config", cfg], capture_output=True, text=True,
                         env={**os.environ, "BREASTGAN_DEBUG": "1"})
    assert env.returncode != 0 and "Traceback" in env.stderr
