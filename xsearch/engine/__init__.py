"""The engine: the one surface that the faces (CLI, HTTP server, Python API) call. Nothing above it reaches below it.

Modules (each imports only downwards: encoders, index, store, media, config, errors; never a face):

- ``collection``  :class:`Collection` — open/create/close, add/remove/reembed/tag, search, items, stats;
  :func:`list_collections`. The only place where FAISS ids are mapped to SQLite rows.
- ``indexer``     incremental indexing, captions and re-embedding through narrow ``ItemReader`` / ``ItemWriter`` /
  ``Stager`` protocols (it never sees a Collection); :class:`IndexReport`, :class:`ReembedReport`.
- ``query``       :class:`Filters` (typed, frozen), :class:`Hit`, the per-handle modality id cache.
- ``similarity``  :func:`embed_many`, :func:`cosine_matrix`, :func:`similarity_matrix`, :func:`save_matrix`.
- ``catalog``     :func:`list_encoders`, :func:`describe_encoder`, :func:`get_encoder`, :func:`parse_memory`,
  :func:`train_encoder` (wraps ``xsearch.train``).
- ``verify``      :func:`verify_collection` (``xsearch verify [--repair]``), :class:`VerifyReport`.
- ``locking``     :class:`WriterLock`: one writer per collection (readers never take it).
- ``versioning``  encoder fingerprints: a collection built with another version of its encoder is *stale*.
- ``batching``    decode/embed files in batches (image decoding in worker processes).
- ``video``       a video's moments (key frames, audio windows): embedding, storing under the video, re-embedding.
- ``executors``   who embeds an ``add``: ``local`` (this process) or ``ray`` (an actor pool; ``executors/ray_pool.py``).
- ``sharding``    sharded collections on Ray: shards built as Ray tasks, searched by one actor per shard.

The surface, for a server that opens collections read-only and never writes::

    col = Collection.open(home, name, read_only=True)      # memory-mapped index; writes raise BadInput
    col.check_encoder()                                     # EncoderMismatch if stale (needs `reindex --reembed`)
    hits = col.search(text="a cat", k=10, filters=Filters(modalities=("image",), under=("/photos/2024",)))
    hits = col.search(image="q.jpg", audio=None, weights=None, k=10)   # or a fused text+image+audio query
    [h.to_dict(with_id=True) for h in hits]                 # {rank, score, path, modality, text, id}
    col.similar(item_id, k=10)                              # "more like this" by item id
    col.item(item_id); col.tags_of([item_id])               # metadata (MissingItem if there is no such id)
    col.file_of(item_id)                                    # the item's file, only if in the collection and on disk
    col.similarity(rows, cols); col.stats(); list_collections(home)

Every error is an ``xsearch.errors.XSearchError`` with a one-line message (MissingCollection / MissingItem -> 404,
BadInput -> 400, EncoderMismatch -> 409 in an HTTP face). Names are imported lazily, so ``import xsearch.engine``
loads neither FAISS, SQLAlchemy nor torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "collection": ("Collection", "list_collections", "TAG_TEMPLATES"),
    "indexer": ("IndexReport", "ReembedReport", "ProgressFn", "read_captions"),
    "query": ("Filters", "Hit", "MODALITIES", "parse_weights", "parse_near", "default_min_score", "clamp_time"),
    "dupes": ("DupeGroup", "find_dupes"),
    "batching": ("shown",),
    "similarity": ("Query", "embed_many", "cosine_matrix", "MatrixResult", "similarity_matrix", "save_matrix"),
    "sharding": ("serve_shards_on_ray",),
    "catalog": ("list_encoders", "describe_encoder", "get_encoder", "parse_memory", "train_encoder"),
    "verify": ("verify_collection", "VerifyReport"),
    "locking": ("WriterLock",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xsearch.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
