"""Sharded collections on Ray: shards built as Ray tasks, searched by one Ray actor per shard.

``xsearch/index/shards.py`` holds the FAISS side (no Ray): the shared training, the id ranges, the files and the
top-k merge. Here the engine adds Ray: :func:`build_shards` fills the shards in parallel as Ray tasks when an
address is given, and :func:`serve_shards_on_ray` starts one actor per shard (each loads its shard file,
memory-mapped, on the node Ray places it; the files must be on storage every node sees) and points the index's
``fanout`` at them, so ``search`` asks every actor and merges. Without Ray, a sharded collection is searched
in-process, shard by shard, with the same merge.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..config import VECTORS_FILE, CollectionInfo
from ..errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from ..index.shards import ShardedIndex
    from .collection import Collection


def _ray_map(address: str) -> Any:
    """A ``map`` running each call as a Ray task (one CPU each), results in order."""
    from .executors.ray_pool import connect

    ray = connect(address)

    def ray_map(fn, *columns):
        task = ray.remote(num_cpus=1)(fn)
        return ray.get([task.remote(*args) for args in zip(*columns)])

    return ray_map


def build_shards(vectors: np.ndarray, ids: np.ndarray, info: CollectionInfo, ray: str | None = None) -> "ShardedIndex":
    """The collection's sharded index (``info.shards`` shards), shards filled as Ray tasks when ``ray`` is set."""
    from ..index.shards import build_sharded

    if len(vectors) < info.shards:
        raise BadInput(f"collection '{info.name}' has {len(vectors)} items: too few for {info.shards} shards")
    return build_sharded(vectors, ids, info.shards, info.index_request, info.target_recall, info.memory_bytes,
                         map_fn=_ray_map(ray) if ray else map)


class ShardSearcher:
    """A Ray actor holding one shard in memory (memory-mapped from its file)."""

    def __init__(self, path: str, dim: int, spec: dict):
        from ..config import IndexSpec
        from ..index import VectorIndex

        self.index = VectorIndex.load(path, dim, IndexSpec.from_dict(spec), mmap=True)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
               nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        from ..index.shards import shard_search

        return shard_search(self.index, queries, k, allowed, nprobe)

    def ntotal(self) -> int:
        return self.index.ntotal


def serve_shards_on_ray(col: "Collection", address: str = "auto") -> int:
    """Search ``col``'s shards through one Ray actor each (``xsearch query/serve --ray``); returns the shard count.
    An unsharded collection is left as it is (0)."""
    from ..index.shards import ShardedIndex, shard_paths

    index = col.index
    if not isinstance(index, ShardedIndex):
        return 0
    attach_shard_actors(index, shard_paths(col.folder / VECTORS_FILE, len(index.shards)), address, col.name)
    return len(index.shards)


def attach_shard_actors(index: "ShardedIndex", files: Sequence[Path], address: str = "auto",
                        name: str = "index") -> list:
    """Start one :class:`ShardSearcher` actor per shard file and route ``index.search`` through them."""
    from .executors.ray_pool import connect

    ray = connect(address)
    actor = ray.remote(ShardSearcher).options(num_cpus=0, max_restarts=3, max_task_retries=3)
    spec = index.spec.to_dict()
    actors = [actor.remote(str(f), index.dim, spec) for f in files]
    counts = ray.get([a.ntotal.remote() for a in actors])
    if counts != [s.ntotal for s in index.shards]:
        raise BadInput(f"{name}: shard actors hold {counts} vectors, the files here "
                       f"{[s.ntotal for s in index.shards]}: the shard files changed while starting")

    def fanout(queries: np.ndarray, k: int, allowed: np.ndarray | None, nprobe: int | None) -> list:
        return ray.get([a.search.remote(queries, k, allowed, nprobe) for a in actors])

    index.fanout = fanout
    index.actors = actors  # type: ignore[attr-defined]  # kept alive with the handle
    return actors
