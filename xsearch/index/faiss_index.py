"""VectorIndex: FAISS inner-product search over L2-normalised vectors, keyed by int64 ids (SQLite row ids)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_with
from ..config import IndexSpec
from ..errors import BadInput, DimensionMismatch, MissingDependency

try:
    import faiss
except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
    raise MissingDependency("xsearch needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 for CPU-only builds)."""
    if os.environ.get("XSEARCH_NO_GPU"):
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


class VectorIndex:
    """A FAISS index of ``dim``-d vectors with explicit int64 ids; adding an existing id replaces it."""

    def __init__(self, dim: int, spec: IndexSpec | None = None, index: "faiss.Index | None" = None):
        self.dim = int(dim)
        self.spec = spec or IndexSpec()
        self.index = index if index is not None else self._build(self.spec)
        if self.index.d != self.dim:
            raise DimensionMismatch(f"index has dimension {self.index.d}, expected {self.dim}")

    def _build(self, spec: IndexSpec) -> "faiss.Index":
        inner = faiss.index_factory(self.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(inner)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All stored ids."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(f"vectors have shape {vectors.shape}; this index holds {self.dim}-d vectors")
        return vectors

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``, replacing any with the same id."""
        vectors = self._check(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise BadInput(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        self.remove(ids)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (missing ones are ignored); return how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or self.ntotal == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ids are -1 where fewer than ``k`` exist. ``allowed`` restricts to those ids."""
        queries = self._check(np.atleast_2d(queries))
        k = max(1, min(int(k), self.ntotal)) if self.ntotal else 1
        if self.ntotal == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)))
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename)."""
        atomic_write_with(path, lambda tmp: faiss.write_index(self.index, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int, spec: IndexSpec | None = None) -> "VectorIndex":
        path = Path(path)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BadInput(f"{path}: unreadable FAISS index ({str(exc).splitlines()[0][:120]})") from None
        return cls(dim, spec, index)
