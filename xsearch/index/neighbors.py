"""All pairs of vectors closer than a threshold: FAISS range search over a flat inner-product index."""
from __future__ import annotations

import numpy as np

from ..errors import MissingDependency

try:
    import faiss
except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
    raise MissingDependency("xsearch needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc


def close_pairs(ids: np.ndarray, vectors: np.ndarray, threshold: float,
                batch: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b) of ``ids`` with a < b and inner product >= ``threshold``, and that score (exact range search)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.asarray(ids, np.int64)
    if len(ids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out_a, out_b, out_s = [], [], []
    for start in range(0, len(ids), batch):
        lims, scores, found = index.range_search(vectors[start : start + batch], float(threshold))
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
        keep = found > rows  # each pair once, never an item with itself
        out_a.append(ids[rows[keep]])
        out_b.append(ids[found[keep]])
        out_s.append(scores[keep])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)
