"""Contrastive alignment: paired data, symmetric InfoNCE, trainable heads on frozen towers, the loop (the `xsearch
train` command lives in xsearch.cli and reaches this package through xsearch.engine.train_encoder).

Public names are imported lazily (``from xsearch.train import fit, Tower``) so ``import xsearch.train`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "xsearch.train.loss": ("ClipLoss", "symmetric_infonce"),
    "xsearch.train.data": ("Item", "PairSet", "read_pairs", "split_pairs", "split_by_item"),
    "xsearch.encoders.heads": ("ResidualMLP", "LinearHead", "build_head", "register_head", "default_head_spec"),
    "xsearch.train.loop": ("Tower", "FitConfig", "FitResult", "fit", "TrainConfig", "TrainResult", "train",
                           "evaluate_pairs"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xsearch.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
