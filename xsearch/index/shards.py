"""Sharded indexes: N FAISS indexes over disjoint id ranges that share one trained quantizer / codebooks.

Built once: the index type is chosen for the whole collection, trained on one sample, and every shard starts as
a copy of that trained (empty) index, so shard ``i`` holds the ids in ``[bounds[i], bounds[i+1])`` coded exactly as
one big index would code them. Search asks every shard for its top-``k`` and keeps the ``k`` best (what FAISS'
``IndexShards`` does), so with the shared quantizer and the same nprobe / efSearch the hits equal the unsharded
index's. Each shard is its own ``.faiss`` file next to the collection's ``vectors.faiss`` name; ``shard_paths``
names them. Shards can be built in parallel by any ``map``-like function (the engine passes a Ray one) and
searched by any fan-out (the engine's Ray shard actors) through ``merge_topk``. Numpy and FAISS only.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np

from ..atomic import atomic_write_bytes
from ..config import IndexSpec
from ..errors import BadInput
from .faiss_index import VectorIndex, _empty
from .idset import IdSet
from .specs import _training_sample, default_memory, resolve, tune

MapFn = Callable[..., Iterable]
FanOut = Callable[[np.ndarray, int, "np.ndarray | None", "int | None"], list[tuple[np.ndarray, np.ndarray]]]
ID_MAX = np.iinfo(np.int64).max
MANIFEST_FORMAT = "xsearch-shards-1"
CRC_AT_LOAD = 256 << 20  # shard files up to this size are checksummed at every load (bigger: size only)


def shard_paths(path: str | os.PathLike[str], n: int) -> list[Path]:
    """Files of an ``n``-shard index saved under ``path`` (``vectors.faiss`` -> ``vectors.shard-000-of-004.faiss``)."""
    path = Path(path)
    return [path.with_name(f"{path.stem}.shard-{i:03d}-of-{n:03d}{path.suffix}") for i in range(n)]


def stale_shard_files(path: str | os.PathLike[str], n: int) -> list[Path]:
    """Shard files next to ``path`` that an ``n``-shard index there (``n`` <= 1: none) does not use: left by an
    earlier shard count."""
    path = Path(path)
    keep = set(shard_paths(path, n)) if n > 1 else set()
    return sorted(f for f in path.parent.glob(f"{path.stem}.shard-*-of-*{path.suffix}") if f not in keep)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` best (highest inner product) of per-shard (scores, ids) results, -1 / -inf padded."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if top_s.shape[1] < k:
        pad_s, pad_i = _empty(len(top_s), k - top_s.shape[1])
        top_s, top_i = np.hstack([top_s, pad_s]), np.hstack([top_i, pad_i])
    return top_s.astype(np.float32), np.where(np.isfinite(top_s), top_i, -1)


def split_bounds(ids: np.ndarray, n: int) -> list[int]:
    """``n + 1`` bounds cutting the sorted ``ids`` into ``n`` ranges of equal count (the last range is open)."""
    ids = np.sort(np.asarray(ids, np.int64))
    cuts = [int(ids[len(ids) * i // n]) if len(ids) else i for i in range(1, n)]
    return [0, *cuts, int(ID_MAX)]


def shard_search(shard: VectorIndex, queries: np.ndarray, k: int, allowed: "IdSet | np.ndarray | None" = None,
                 nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One shard's part of a sharded search: with ``nprobe`` (unfiltered IVF) exactly those lists, as FAISS'
    ``IndexShards`` asks its shards; otherwise the shard's own ``search``."""
    if nprobe is None or shard.layout != "ivf" or allowed is not None:
        return shard.search(queries, k, allowed)
    if shard.ntotal == 0:
        return _empty(len(queries), k)
    scores, ids = shard.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=int(nprobe)))
    return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids


def serialize(index: VectorIndex) -> np.ndarray:
    return faiss.serialize_index(index.index)


def fill_shard(template: np.ndarray, ids: np.ndarray, vectors: np.ndarray, dim: int) -> np.ndarray:
    """One shard: a copy of the trained ``template`` (serialised) holding ``ids``; returned serialised."""
    shard = VectorIndex(dim, IndexSpec(), faiss.deserialize_index(template))
    shard.add(ids, vectors)
    return serialize(shard)


class ShardedIndex:
    """``VectorIndex``'s surface over shards with disjoint id ranges ``[bounds[i], bounds[i+1])``."""

    layout = "shards"

    def __init__(self, dim: int, spec: IndexSpec, shards: list[VectorIndex], bounds: Sequence[int]):
        if len(bounds) != len(shards) + 1:
            raise BadInput(f"{len(shards)} shards need {len(shards) + 1} bounds, got {len(bounds)}")
        self.dim, self.shards, self.bounds = int(dim), shards, [int(b) for b in bounds]
        self._spec = spec
        self.fanout: FanOut | None = None  # set by the engine to search the shards elsewhere (Ray actors)
        self.token = shards[0].token
        self.apply_params(spec.params)

    # ---- what VectorIndex has ----
    @property
    def spec(self) -> IndexSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: IndexSpec) -> None:
        self._spec = IndexSpec(spec.kind, spec.factory, spec.metric,
                               {**spec.params, "shards": len(self.shards), "shard_bounds": self.bounds}, spec.recall)

    @property
    def _ivf(self):
        return self.shards[0]._ivf

    @property
    def _hnsw(self):
        return self.shards[0]._hnsw

    @property
    def nprobe(self) -> int:
        return self.shards[0].nprobe

    @property
    def ef_search(self) -> int:
        return self.shards[0].ef_search

    @property
    def read_only(self) -> bool:
        return any(s.read_only for s in self.shards)

    @read_only.setter
    def read_only(self, value: bool) -> None:
        for s in self.shards:
            s.read_only = value

    @property
    def version(self) -> int:
        return sum(s.version for s in self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    @property
    def index(self):  # pragma: no cover - informational only (FAISS object of shard 0)
        return self.shards[0].index

    def apply_params(self, params: dict) -> None:
        for s in self.shards:
            s.apply_params(params)

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """Shard number of each id."""
        return np.clip(np.searchsorted(self.bounds, np.asarray(ids, np.int64), side="right") - 1, 0,
                       len(self.shards) - 1)

    def ids(self) -> np.ndarray:
        return np.concatenate([s.ids() for s in self.shards])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        where = self.shard_of(ids)
        for i, shard in enumerate(self.shards):
            mask = where == i
            if mask.any():
                shard.add(ids[mask], np.asarray(vectors)[mask])

    def remove(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, np.int64)
        where = self.shard_of(ids)
        return sum(shard.remove(ids[where == i]) for i, shard in enumerate(self.shards) if (where == i).any())

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        where = self.shard_of(ids)
        for i, shard in enumerate(self.shards):
            mask = where == i
            if mask.any():
                out[mask] = shard.reconstruct(ids[mask])
        return out

    def search(self, queries: np.ndarray, k: int,
               allowed: "IdSet | np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's top-``k`` (here, or through ``fanout``), merged. Unfiltered IVF: every shard probes the
        same ``nprobe`` lists of the shared quantizer (rows short of ``k`` hits: 8x more lists, as unsharded), so the
        hits equal one index's; filtered searches are each shard's own (always ``k`` hits when ``k`` match)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal)) if self.ntotal else 1
        if allowed is not None:
            allowed = IdSet.of(allowed)
            return merge_topk(self._ask(queries, k, allowed, None), k)
        nprobe = max(1, self.nprobe) if self._ivf is not None else None
        scores, ids = merge_topk(self._ask(queries, k, None, nprobe), k)
        nlist = int(self._ivf.nlist) if self._ivf is not None else 0
        while nprobe is not None and nprobe < nlist:
            short = (ids >= 0).sum(axis=1) < min(k, self.ntotal)
            if not short.any():
                break
            nprobe = nlist if nprobe * 8 >= nlist else nprobe * 8
            scores[short], ids[short] = merge_topk(self._ask(queries[short], k, None, nprobe), k)
        return scores, ids

    def _ask(self, queries: np.ndarray, k: int, allowed: IdSet | None, nprobe: int | None) -> list:
        if self.fanout is not None:
            return self.fanout(queries, k, None if allowed is None else allowed.ids, nprobe)
        return [shard_search(s, queries, k, allowed, nprobe) for s in self.shards]

    def to_gpu(self, enable: bool = True) -> bool:
        return all([s.to_gpu(enable) for s in self.shards])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Each shard to its own file (see :func:`shard_paths`), atomically, then ``path`` itself: a small JSON
        manifest naming them with their sizes and CRC-32s (what a collection checksums and watches)."""
        files = []
        for shard, file in zip(self.shards, shard_paths(path, len(self.shards))):
            data = serialize(shard).tobytes()
            atomic_write_bytes(file, data)
            files.append({"file": file.name, "bytes": len(data), "crc32": zlib.crc32(data), "ntotal": shard.ntotal})
        manifest = {"format": MANIFEST_FORMAT, "shards": files, "bounds": self.bounds}
        atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int, spec: IndexSpec, mmap: bool = False) -> "ShardedIndex":
        """Read the manifest at ``path`` and its shards; BadInput if a shard is missing or not what was saved."""
        manifest = read_manifest(path)
        shards = []
        for entry in manifest["shards"]:
            file = Path(path).with_name(entry["file"])
            size = file.stat().st_size if file.is_file() else None
            if size != entry["bytes"] or (size <= CRC_AT_LOAD and zlib.crc32(file.read_bytes()) != entry["crc32"]):
                raise BadInput(f"{file}: shard missing or damaged (not the file saved with {Path(path).name})")
            shards.append(VectorIndex.load(file, dim, spec, mmap=mmap))
        return cls(dim, spec, shards, manifest["bounds"])


def read_manifest(path: str | os.PathLike[str]) -> dict:
    """The shard manifest at ``path`` (BadInput if it is not one)."""
    try:
        manifest = json.loads(Path(path).read_bytes())
        assert manifest["format"] == MANIFEST_FORMAT and manifest["shards"]
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise BadInput(f"{path}: not a shard manifest of xsearch") from None


def is_sharded(spec: IndexSpec | None) -> bool:
    return bool(spec and int(spec.params.get("shards", 1) or 1) > 1)


def load_index(path: str | os.PathLike[str], dim: int, spec: IndexSpec | None,
               mmap: bool = False) -> "VectorIndex | ShardedIndex":
    """``VectorIndex.load`` or, for a sharded spec, ``ShardedIndex.load`` (``path`` is then its manifest)."""
    if is_sharded(spec):
        return ShardedIndex.load(path, dim, spec, mmap=mmap)  # type: ignore[arg-type]
    return VectorIndex.load(path, dim, spec, mmap=mmap)


def build_sharded(vectors: np.ndarray, ids: np.ndarray, shards: int, request: str = "auto",
                  target_recall: float = 0.95, memory_bytes: int | None = None, seed: int = 0,
                  map_fn: MapFn = map) -> ShardedIndex:
    """Choose the index for all of ``vectors``, train it once on a sample, fill ``shards`` copies over disjoint id
    ranges (through ``map_fn(fill_shard, templates, ids, vectors, dims)``, e.g. Ray tasks) and tune nprobe /
    efSearch on the merged search."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if shards < 2:
        raise BadInput(f"--shards must be at least 2 for a sharded index (got {shards})")
    n, dim = vectors.shape
    kind, factory = resolve(request, n, dim, memory_bytes)
    params = {"request": request, "target_recall": float(target_recall), "n_built": int(n),
              "memory_budget": int(memory_bytes or default_memory())}
    template = VectorIndex(dim, IndexSpec(kind=kind, factory=factory, params=params))
    template.train(_training_sample(template, vectors, seed) if n else vectors)
    bounds = split_bounds(ids, shards)
    where = np.clip(np.searchsorted(bounds, ids, side="right") - 1, 0, shards - 1)
    parts = [where == i for i in range(shards)]
    blob = serialize(template)
    built = list(map_fn(fill_shard, [blob] * shards, [ids[m] for m in parts], [vectors[m] for m in parts],
                        [dim] * shards))
    spec = IndexSpec(kind=kind, factory=factory, params=params)
    index = ShardedIndex(dim, spec, [VectorIndex(dim, spec, faiss.deserialize_index(b)) for b in built], bounds)
    if template._ivf is not None:
        params["nlist"] = int(template._ivf.nlist)
    recall = tune(index, vectors, ids, target_recall, seed) if n else 1.0  # type: ignore[arg-type]
    index.spec = IndexSpec(kind, factory, "ip", {**params, **index.spec.params}, recall)
    index.apply_params(index.spec.params)
    return index
