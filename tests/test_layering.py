"""Imports flow one way: cli → commands → io layers → math → results/errors. Checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "svdtool"

# Modules that are pure math: they may import only the standard library, numpy/scipy/torch,
# other math modules, results and errors.
MATH = ["linalg", "spectrum", "coverage", "factorize", "sketch", "subspace", "methods"]
IO_LAYERS = ["engine", "loading", "calibration", "gradients", "adapters", "report"]
FORBIDDEN_FOR_MATH = {"svdtool.cli", "svdtool.commands", *(f"svdtool.{m}" for m in IO_LAYERS)}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _svdtool_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("svdtool"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("svdtool"))
    return out


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _name(p))
def test_import_direction(path: Path) -> None:
    me = _name(path)
    mine = _top(me)
    imports = _svdtool_imports(path)
    if me.startswith("svdtool.cli") or me == "svdtool.__main__":
        return  # the top of the stack may import anything
    assert not any(i.startswith("svdtool.cli") for i in imports), f"{me} imports the CLI"
    if mine.split(".")[-1] in MATH:
        bad = {i for i in imports if _top(i) in FORBIDDEN_FOR_MATH}
        assert not bad, f"math module {me} imports {bad}"
    if mine in {f"svdtool.{m}" for m in IO_LAYERS}:
        assert not any(i.startswith("svdtool.commands") for i in imports), f"{me} imports a command"
    if mine in {"svdtool.results", "svdtool.errors"}:
        assert all(_top(i) in {"svdtool.results", "svdtool.errors"} for i in imports), f"{me}: {imports}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _name(p))
def test_typer_and_rich_only_in_cli(path: Path) -> None:
    me = _name(path)
    if me.startswith("svdtool.cli"):
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        assert not any(n.split(".")[0] in {"typer", "rich", "click"} for n in names), f"{me} imports {names}"


def test_spectrum_path_never_imports_transformers_or_peft(tiny_llama: Path) -> None:
    code = (
        "import sys\n"
        "from svdtool.commands.spectrum import SpectrumRequest, run_spectrum\n"
        f"run_spectrum(SpectrumRequest(model={str(tiny_llama)!r}, device='cpu'))\n"
        "print(sorted(m for m in ('transformers', 'peft', 'gguf', 'matplotlib') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
