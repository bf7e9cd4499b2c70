"""Helpers shared by the benchmark scripts (not part of the package)."""
from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PHOTO_SETS = ("dev-photos", "imagenet-dev", "flickr-dev")


def machine() -> str:
    """One line describing this machine."""
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def photo_folder(dest: Path, data: Path = DATA) -> Path:
    """Copy every photo of the development sets into one flat folder (real JPEGs); return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PHOTO_SETS:
        for p in sorted((data / name).glob("*.jpg")):
            shutil.copy(p, dest / f"{name}-{p.name}")
    return dest


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
