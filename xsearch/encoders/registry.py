"""Encoder registry: prefixed names -> backend factories, imported lazily; entry-point plugins.

Names look like ``xsearch-mini``, ``openclip:ViT-B-32/laion2b_s34b_b79k``, ``openclip:ViT-B-32//path/to.pt``,
``st:all-MiniLM-L6-v2`` or ``st:/path/to/folder``, ``align:/path/to/trained-encoder``.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

from ..errors import UnknownEncoder
from .base import Encoder

PLUGIN_GROUP = "xsearch.encoders"


@dataclass(frozen=True)
class Backend:
    """How to build encoders whose name starts with ``prefix``."""

    prefix: str
    target: str  # "module:function"; the function takes the part after "prefix:" (or "") and returns an Encoder
    description: str
    example: str
    exact: bool = False  # True: the whole name is the prefix (``xsearch-mini``), no argument

    def load(self) -> Callable[[str], Encoder]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


_BACKENDS: dict[str, Backend] = {}
_CACHE: dict[str, Encoder] = {}
_LOCK = threading.RLock()  # re-entrant: a backend (align:) may create its base encoder


def register(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _BACKENDS[backend.prefix] = backend


def backends() -> list[Backend]:
    """Every registered backend, builtins and plugins."""
    _load_plugins()
    return sorted(_BACKENDS.values(), key=lambda b: (not b.exact, b.prefix))


def split_name(name: str) -> tuple[Backend, str]:
    """Find the backend for ``name`` and the argument after its prefix."""
    _load_plugins()
    name = name.strip()
    if name in _BACKENDS and _BACKENDS[name].exact:
        return _BACKENDS[name], ""
    prefix, sep, rest = name.partition(":")
    backend = _BACKENDS.get(prefix)
    if not sep or backend is None or backend.exact or not rest:
        known = ", ".join(b.example for b in backends())
        raise UnknownEncoder(f"unknown encoder '{name}'; known forms: {known} (see `xsearch encoders`)")
    return backend, rest


def create(name: str, cache: bool = True) -> Encoder:
    """Build (or reuse) the encoder called ``name``."""
    with _LOCK:
        if cache and name in _CACHE:
            return _CACHE[name]
        backend, arg = split_name(name)
        encoder = backend.load()(arg)
        if cache:
            _CACHE[name] = encoder
            _CACHE[encoder.id] = encoder
        return encoder


def clear_cache() -> None:
    _CACHE.clear()


_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        backend = ep.load()
        if isinstance(backend, Backend):
            register(backend)


for _b in (
    Backend("xsearch-mini", "xsearch.encoders.mini:load", "offline default: MiniLM text + EfficientNet-Lite0 ConSE image bridge "
            "(+ audio tower), 384-d", "xsearch-mini", exact=True),
    Backend("openclip", "xsearch.encoders.openclip:load", "open_clip CLIP models: pretrained tag (from the HF cache) or a local "
            "checkpoint file", "openclip:ViT-B-32/laion2b_s34b_b79k"),
    Backend("st", "xsearch.encoders.sentence:load", "sentence-transformers text models by name (cached) or local folder",
            "st:/path/to/model"),
    Backend("align", "xsearch.encoders.aligned:load", "an encoder trained by `xsearch train` (folder with config + safetensors)",
            "align:/path/to/trained"),
):
    register(_b)
