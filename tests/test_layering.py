"""The import graph of src/breastgan keeps its layers apart.

Every ``import`` / ``from ... import`` statement is read from the source (AST), wherever it is: at
module level, inside functions, under ``if TYPE_CHECKING``; relative imports are resolved. Plug-ins
that a layer must not import are imported by name through breastgan.plugins instead.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "breastgan"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``source`` imports (``from a import b`` counts as a and a.b)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p.read_text(), module_name(p), p.name == "__init__.py") for p in sorted(PKG.rglob("*.py"))}


def violations(modules: dict[str, set[str]], owner: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules at or under ``owner`` that import one of ``forbidden`` (a module or anything under it)."""
    out = {}
    for mod, imported in modules.items():
        if mod == owner or mod.startswith(owner + "."):
            bad = sorted(i for i in imported if any(i == f or i.startswith(f + ".") for f in forbidden))
            if bad:
                out[mod] = bad
    return out


@pytest.fixture(scope="module")
def modules():
    g = graph()
    assert "breastgan.generation.loader" in g and "breastgan.sharing.package" in g and "breastgan.run_dir" in g
    return g


def test_the_scanner_sees_every_kind_of_import():
    src = """
import breastgan.training.trainer as t
from breastgan import sharing
def f():
    from breastgan.training.dp import x
    from . import loader
    from ..sharing.manifest import Manifest
if TYPE_CHECKING:
    import breastgan.evaluation
"""
    got = imports_of(src, "breastgan.generation.kinds")
    assert {"breastgan.training.trainer", "breastgan.sharing", "breastgan.training.dp", "breastgan.generation.loader",
            "breastgan.sharing.manifest", "breastgan.evaluation"} <= got
    assert violations({"breastgan.generation.kinds": got}, "breastgan.generation", ("breastgan.sharing",)) == {
        "breastgan.generation.kinds": ["breastgan.sharing", "breastgan.sharing.manifest", "breastgan.sharing.manifest.Manifest"]}
    assert imports_of("from . import kinds", "breastgan.generation", is_package=True) == {"breastgan.generation", "breastgan.generation.kinds"}
    # a name that merely starts like a forbidden package is not inside it
    assert violations({"breastgan.sharing.x": {"breastgan.trainingwheels"}}, "breastgan.sharing", ("breastgan.training",)) == {}


def test_sharing_imports_nothing_from_training(modules):
    assert violations(modules, "breastgan.sharing", ("breastgan.training",)) == {}


def test_generation_imports_neither_sharing_nor_training(modules):
    assert violations(modules, "breastgan.generation", ("breastgan.sharing", "breastgan.training")) == {}


def test_config_imports_neither_training_nor_evaluation(modules):
    assert violations(modules, "breastgan.config", ("breastgan.training", "breastgan.evaluation")) == {}


def test_run_dir_imports_nothing_from_training_generation_or_sharing(modules):
    assert violations(modules, "breastgan.run_dir", ("breastgan.training", "breastgan.generation", "breastgan.sharing")) == {}


def test_plugins_module_is_neutral(modules):
    assert {i for i in modules["breastgan.plugins"] if i.startswith("breastgan")} == set()


@pytest.mark.parametrize("module", ["breastgan.generation", "breastgan.sharing", "breastgan.run_dir"])
def test_imports_in_a_fresh_interpreter_without_training(module):
    code = (f"import sys, {module}; "
            "bad = sorted(m for m in sys.modules if m == 'breastgan.training' or m.startswith('breastgan.training.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} pulled in {proc.stdout.strip()} {proc.stderr[-2000:]}"
