"""The layering rules of the project, checked on the source: faces -> engine -> {encoders, index, store, media} ->
config/errors; train -> encoders/media; no module fails to import on its own (no import cycles)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "xsearch"
BOTTOM = {"xsearch.config", "xsearch.errors", "xsearch.atomic"}
LAYERS = {"xsearch.encoders", "xsearch.index", "xsearch.store", "xsearch.media", "xsearch.media_video"}
# module prefix -> xsearch modules it may import (by prefix); third-party names it must not import
ALLOWED = {
    "xsearch.cli": {"xsearch.engine", "xsearch.server"} | BOTTOM,  # `xsearch serve` starts the HTTP face
    "xsearch.server": {"xsearch.engine", "xsearch.server"} | BOTTOM,
    "xsearch.engine.catalog": {"xsearch.engine", "xsearch.train"} | LAYERS | BOTTOM,  # the train entry point
    "xsearch.engine": {"xsearch.engine"} | LAYERS | BOTTOM,
    "xsearch.index": {"xsearch.index"} | BOTTOM,
    "xsearch.store": {"xsearch.store"} | BOTTOM,
    "xsearch.encoders": {"xsearch.encoders", "xsearch.media"} | BOTTOM,
    "xsearch.train": {"xsearch.train", "xsearch.encoders", "xsearch.media", "xsearch.evaluate"} | BOTTOM,
    "xsearch.media": {"xsearch.media_video"} | BOTTOM,  # media_video: PyAV decoding (the video extra)
    "xsearch.media_video": BOTTOM,
    "xsearch.config": BOTTOM,
}
FORBIDDEN = {"xsearch.index": {"torch", "sqlalchemy"}, "xsearch.store": {"faiss", "torch"},
             "xsearch.engine": {"typer", "rich"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (function-level imports too), relative ones made absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            if not node.module:  # from . import x
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def rule_for(name: str, table: dict) -> tuple[str, set[str]] | None:
    keys = [k for k in table if name == k or name.startswith(k + ".")]
    return (max(keys, key=len), table[max(keys, key=len)]) if keys else None


SOURCES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    name = module_name(path)
    imported = imports_of(path)
    rule = rule_for(name, ALLOWED)
    if rule:
        bad = sorted(m for m in imported if m.startswith("xsearch") and m != "xsearch"
                     and not any(m == a or m.startswith(a + ".") for a in rule[1]))
        assert not bad, f"{name} may not import {bad} (rule {rule[0]})"
    forbidden = rule_for(name, FORBIDDEN)
    if forbidden:
        bad = sorted(m for m in imported if m.split(".")[0] in forbidden[1])
        assert not bad, f"{name} must not import {bad}"


def test_every_module_imports_on_its_own():
    """Each module first in a clean xsearch import state: an import cycle would fail here."""
    names = [module_name(p) for p in SOURCES]
    script = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "bad = []\n"
        "for n in names:\n"
        "    for m in [m for m in sys.modules if m == 'xsearch' or m.startswith('xsearch.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as exc:\n"
        "        if type(exc).__name__ != 'MissingDependency':\n"
        "            bad.append(f'{n}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PKG.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_the_engine_and_cli_loads_no_heavy_library():
    code = ("import sys, xsearch.cli, xsearch.engine; from xsearch.engine import Collection, Filters, Hit; "
            "print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert done.stdout.strip() == "[]"
