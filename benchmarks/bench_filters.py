"""Per-query overhead of the default text->image modality filter, before and after the per-handle modality cache.

    python benchmarks/bench_filters.py [--sizes 20000 200000] [--index flat ivf] [--queries 200]

A collection of N random 384-d vectors (half images, half captions) is written straight into the store (no encoder
runs). Each row times one k=10 search restricted to images, as `xsearch query TEXT` does:
- "SQL per query": the previous path, which counted modalities and loaded every image id from SQLite per query and
  handed FAISS a fresh allow-list;
- "cached": ``Collection.search_vectors`` with the per-handle modality cache and its reusable FAISS selector;
- "FAISS only": the same allow-list search straight on the index (what is left when the engine adds nothing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, percentiles, table  # noqa: E402

from xsearch.encoders.base import Encoder  # noqa: E402
from xsearch.engine import Collection, Filters  # noqa: E402
from xsearch.store import ItemRecord  # noqa: E402

DIM = 384


class NoEncoder(Encoder):
    """Stands for the collection's encoder: the benchmark only searches with vectors."""

    id, dim, modalities = "bench-vectors", DIM, frozenset({"text", "image"})


def build(home: str, n: int, index: str, seed: int = 0) -> Collection:
    rng = np.random.default_rng(seed)
    col = Collection.open(home, "bench", encoder=NoEncoder(), create=True, index=index)
    for start in range(0, n, 20_000):
        count = min(20_000, n - start)
        vecs = rng.standard_normal((count, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        records = [ItemRecord(key=f"/bench/{i}", path=f"/bench/{i}", modality="image" if i % 2 else "text")
                   for i in range(start, start + count)]
        col.store.upsert(records, vecs)
    col.rebuild_index()
    return col


def timed(fn, queries: np.ndarray) -> list[float]:
    fn(queries[:1])
    out = []
    for q in queries:
        start = time.perf_counter()
        fn(q[None, :])
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--index", nargs="+", default=["flat", "ivf"])
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    for n in args.sizes:
        for spec in args.index:
            with tempfile.TemporaryDirectory() as home:
                col = build(home, n, spec)
                images = Filters(modalities=("image",))

                def sql_per_query(q):
                    col.store.counts()
                    allowed = col.store.ids_where(modalities=["image"])
                    _, ids = col.index.search(q, 10, allowed=allowed)
                    rows = col.store.get(np.unique(ids[ids >= 0]).tolist())
                    return [int(i) for i in ids[0] if int(i) in rows]

                cached_set = col._modality.idset(["image"])
                results = {}
                for name, fn in (("SQL per query", sql_per_query),
                                 ("cached", lambda q: col.search_vectors(q, 10, images)),
                                 ("FAISS only", lambda q: col.index.search(q, 10, allowed=cached_set))):
                    results[name] = percentiles(timed(fn, queries))
                for q in queries[:5]:  # both paths return the same hits
                    assert [h.id for h in col.search_vectors(q[None], 10, images)[0]] == sql_per_query(q[None])
                base = results["SQL per query"][0]
                for name, (p50, p99) in results.items():
                    rows.append([n, col.index_spec.factory, name, f"{p50:.2f}", f"{p99:.2f}", f"{base / p50:.1f}x"])
                col.close()
    print(f"# text->image search overhead (k=10, half the items are images); {machine()}\n")
    print(table(["items", "index", "path", "p50 ms", "p99 ms", "speed vs SQL per query"], rows))


if __name__ == "__main__":
    main()
