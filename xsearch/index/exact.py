"""Exact inner-product top-k in numpy/FAISS: filtered fallbacks, ground truth and recall."""
from __future__ import annotations

import numpy as np

import faiss

CHUNK = 4096


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest scores (descending) and their column numbers; -1 / -inf pad short rows."""
    nq, m = scores.shape
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    take = min(k, m)
    if take == 0:
        return out_s, out_i
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < m else np.tile(np.arange(m), (nq, 1))
    part_s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    out_s[:, :take] = np.take_along_axis(part_s, order, axis=1)
    out_i[:, :take] = np.take_along_axis(part, order, axis=1)
    return out_s, out_i


def exact_search(queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries`` against ``vectors`` (rows named by ``labels``); scores are inner products."""
    if len(vectors) > CHUNK:  # FAISS' BLAS kernel with a bounded heap beats a dense score matrix
        scores, cols = faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(vectors), min(k, len(vectors)),
                                 metric=faiss.METRIC_INNER_PRODUCT)
    else:
        scores, cols = topk_rows(queries @ vectors.T, min(k, len(vectors)))
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    valid = cols >= 0
    out_s[:, : cols.shape[1]] = np.where(valid, scores, -np.inf)
    out_i[:, : cols.shape[1]] = np.where(valid, labels[np.clip(cols, 0, None)], -1)
    return out_s, out_i


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each row's true top-``k`` ids present in its found top-``k``."""
    hits = [len(np.intersect1d(f[:k][f[:k] >= 0], t[:k][t[:k] >= 0])) for f, t in zip(found, truth)]
    denom = [max(1, int((t[:k] >= 0).sum())) for t in truth]
    return float(np.mean(np.asarray(hits) / np.asarray(denom)))
