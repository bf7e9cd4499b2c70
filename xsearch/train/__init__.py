"""Contrastive alignment: paired data, symmetric InfoNCE, trainable heads on frozen towers, the loop, the CLI.

Public names are imported lazily (``from xsearch.train import fit, Tower``) so ``import xsearch.train`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClipLoss": "loss", "symmetric_infonce": "loss",
    "Item": "data", "PairSet": "data", "read_pairs": "data", "split_pairs": "data", "split_by_item": "data",
    "ResidualMLP": "..encoders.heads", "LinearHead": "..encoders.heads", "build_head": "..encoders.heads",
    "register_head": "..encoders.heads", "default_head_spec": "..encoders.heads",
    "Tower": "loop", "FitConfig": "loop", "FitResult": "loop", "fit": "loop", "TrainConfig": "loop",
    "TrainResult": "loop", "train": "loop", "evaluate_pairs": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xsearch.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name] if _EXPORTS[name].startswith(".") else f".{_EXPORTS[name]}", __name__), name)
