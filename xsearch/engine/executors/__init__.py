"""Executors: who decodes and embeds the files an ``add`` planned. Keyed by name; ``local`` is the in-process
path (``indexer.embed_files``), ``ray`` an actor pool on a Ray cluster (``ray.py``, needs the ``ray`` extra).

Every executor has the signature of :func:`xsearch.engine.indexer.embed_files` and calls ``on_batch`` /
``on_error`` in the driver, so the single writer (the driver's collection) commits batches exactly as locally.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ...encoders.base import Encoder
from ...errors import BadInput
from ...media import FileInfo
from ..batching import OnBatch, OnError

EmbedFn = Callable[[Encoder, Sequence[FileInfo], OnBatch, OnError, "int | None", int], None]


def _local(option: str | None) -> EmbedFn:
    from ..indexer import embed_files

    return embed_files


def _ray(option: str | None) -> EmbedFn:
    from .ray_pool import RayExecutor

    return RayExecutor(address=option or "auto")


EXECUTORS: dict[str, Callable[[str | None], EmbedFn]] = {"local": _local, "ray": _ray}


def get_executor(spec: str | EmbedFn | None) -> EmbedFn:
    """An executor by name: ``local``, ``ray`` (address ``auto``) or ``ray:ADDRESS``; callables pass through."""
    if callable(spec):
        return spec
    name, _, option = (spec or "local").partition(":")
    if name not in EXECUTORS:
        raise BadInput(f"unknown executor '{spec}' (known: {', '.join(sorted(EXECUTORS))}; e.g. ray:auto)")
    return EXECUTORS[name](option or None)


__all__ = ["EXECUTORS", "EmbedFn", "get_executor"]
