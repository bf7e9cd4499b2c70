"""Retrieval metrics over a similarity matrix (numpy only): ranks, recall@k, mean/median rank.

Conventions: ``sim`` is ``(n_queries, n_items)``, higher means more similar. ``relevant`` says which items
are right for each query, in any of three forms:

- a 1-d int array of length ``n_queries`` (exactly one right item per query, e.g. an image per caption),
- a sequence of iterables of ints (several right items per query, e.g. five captions per image),
- a ``(n_queries, n_items)`` boolean matrix.

A query's rank is the 1-based position of its best-scored right item. Ties are counted against the
query (a wrong item scoring the same as the right one ranks ahead of it), so a constant ``sim`` never
looks good.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import numpy as np

Relevance = Union[np.ndarray, Sequence[Iterable[int]]]


def relevance_matrix(relevant: Relevance, n_items: int) -> np.ndarray:
    """Normalise any accepted ``relevant`` form into a ``(n_queries, n_items)`` boolean matrix."""
    if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
        if relevant.ndim != 2 or relevant.shape[1] != n_items:
            raise ValueError(f"relevance matrix shape {relevant.shape} does not fit {n_items} items")
        return relevant
    if isinstance(relevant, np.ndarray) and relevant.ndim == 1 and np.issubdtype(relevant.dtype, np.integer):
        rows: Sequence[Iterable[int]] = [[int(i)] for i in relevant]
    else:
        rows = [[int(r)] if np.isscalar(r) else list(r) for r in relevant]  # type: ignore[arg-type]
    out = np.zeros((len(rows), n_items), dtype=bool)
    for q, items in enumerate(rows):
        out[q, list(items)] = True
    return out


def ranks(sim: np.ndarray, relevant: Relevance) -> np.ndarray:
    """1-based rank of the best-scored relevant item for each query (ties count against the query)."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-d, got shape {sim.shape}")
    rel = relevance_matrix(relevant, sim.shape[1])
    if rel.shape[0] != sim.shape[0]:
        raise ValueError(f"{rel.shape[0]} relevance rows for {sim.shape[0]} queries")
    if not rel.any(axis=1).all():
        raise ValueError("every query needs at least one relevant item")
    best = np.where(rel, sim, -np.inf).max(axis=1, keepdims=True)
    ahead = (sim >= best) & ~rel
    return 1 + ahead.sum(axis=1)


def recall_at_k(sim: np.ndarray, relevant: Relevance, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries with a relevant item in the top ``k``, for each ``k``."""
    r = ranks(sim, relevant)
    return {int(k): float((r <= k).mean()) for k in ks}


def mean_rank(sim: np.ndarray, relevant: Relevance) -> float:
    return float(ranks(sim, relevant).mean())


def median_rank(sim: np.ndarray, relevant: Relevance) -> float:
    return float(np.median(ranks(sim, relevant)))


def mean_reciprocal_rank(sim: np.ndarray, relevant: Relevance) -> float:
    return float((1.0 / ranks(sim, relevant)).mean())


def retrieval_report(sim: np.ndarray, relevant: Relevance, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"R@1": .., "R@5": .., ..., "mean_rank": .., "median_rank": .., "mrr": ..}`` in one pass."""
    r = ranks(sim, relevant)
    out = {f"R@{k}": float((r <= k).mean()) for k in ks}
    out.update(mean_rank=float(r.mean()), median_rank=float(np.median(r)), mrr=float((1.0 / r).mean()))
    return out


def top_k_accuracy(scores: np.ndarray, labels: Sequence[int], ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Classification top-k accuracy: ``scores`` is ``(n_samples, n_classes)``, ``labels`` the true class ids."""
    return recall_at_k(scores, np.asarray(labels, dtype=np.int64), ks)
