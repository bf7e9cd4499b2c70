"""Ray overhead: `xsearch index` images/s locally vs on a Ray actor pool, and sharded vs unsharded search.

    python benchmarks/bench_ray.py ingest [--actors 1 2] [--batch-size 32] [--repeats 1]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_ray.py query [--n 1000000] [--dim 384] [--spec ivf] [--shards 2 4]

ingest: the same real photos (benchmarks/_common.photo_folder) into a fresh collection with ``Collection.add``,
locally and with ``executor=RayExecutor(actors=N)`` on a local Ray started once beforehand (``ray.init``, not
timed); each Ray run includes starting its actors and loading the encoder in each. Ratio = images/s ÷ local.
query: the `gauss` mixture of bench_index.py; one IVF index trained once, filled as one index and as N shards
over disjoint id ranges (the same trained quantizer, the same nprobe tuned on the unsharded index), searched
in-process (shard by shard) and through one Ray actor per shard; recall@10 against exact search on fresh queries.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, photo_folder, table  # noqa: E402
from bench_index import mixture, qps  # noqa: E402


def ingest(args) -> None:
    import ray

    from xsearch import Collection
    from xsearch.encoders import create
    from xsearch.engine.executors.ray_pool import RayExecutor

    encoder = create(args.encoder)
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    load = os.getloadavg()[0]

    def rate(executor) -> float:
        with tempfile.TemporaryDirectory() as home:
            col = Collection.open(home, "bench", encoder=encoder, create=True)
            start = time.perf_counter()
            report = col.add([folder], batch_size=args.batch_size, executor=executor)
            elapsed = time.perf_counter() - start
            col.close()
        return report.added / elapsed

    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos")
        n = len(list(folder.glob("*.jpg")))
        rows = []
        local = statistics.median(rate("local") for _ in range(args.repeats))
        rows.append(["local (this process)", "-", round(local, 1), "1.00"])
        for actors in args.actors:
            r = statistics.median(rate(RayExecutor(actors=actors)) for _ in range(args.repeats))
            rows.append([f"--ray, {actors} actor(s)", actors, round(r, 1), f"{r / local:.2f}"])
    ray.shutdown()
    print(f"# ray ingest: {n} real photos, encoder {encoder.id}, batch {args.batch_size}, median of {args.repeats}; "
          f"ray.init {ray_start:.1f} s (not timed); {machine()}; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end\n")
    print(table(["run", "actors", "images/s", "ratio to local"], rows))


def query(args) -> None:
    import faiss
    import ray

    from xsearch.config import IndexSpec
    from xsearch.engine.sharding import attach_shard_actors
    from xsearch.index import VectorIndex
    from xsearch.index.exact import exact_search, recall_at
    from xsearch.index.shards import ShardedIndex, fill_shard, serialize, shard_paths, split_bounds
    from xsearch.index.specs import _training_sample, resolve, tune

    t0 = time.perf_counter()
    data = mixture(args.n + args.queries, args.dim, seed=0)  # queries: fresh draws from the same mixture
    x, q = data[: args.n], data[args.n:]
    ids = np.arange(args.n, dtype=np.int64)
    _, truth = exact_search(q, x, ids, 10)
    kind, factory = resolve(args.spec, args.n, args.dim)
    template = VectorIndex(args.dim, IndexSpec(kind=kind, factory=factory))
    t1 = time.perf_counter()
    template.train(_training_sample(template, x, 0))
    train_s = time.perf_counter() - t1
    blob = serialize(template)
    one = VectorIndex(args.dim, template.spec, faiss.deserialize_index(blob))
    one.add(ids, x)
    tune(one, x, ids, args.target_recall)
    params = one.spec.params
    print(f"# sharded query: gauss n={args.n} dim={args.dim} {factory} {params.get('nprobe') and 'nprobe=' + str(params['nprobe'])}; "
          f"data+truth {t1 - t0:.0f} s, one training {train_s:.0f} s; {machine()}\n", flush=True)
    rows = [_row("unsharded", one, q, truth, recall_at)]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    for n_shards in args.shards:
        bounds = split_bounds(ids, n_shards)
        parts = [(ids >= bounds[i]) & (ids < bounds[i + 1]) for i in range(n_shards)]
        started = time.perf_counter()
        shards = [VectorIndex(args.dim, one.spec, faiss.deserialize_index(fill_shard(blob, ids[m], x[m], args.dim)))
                  for m in parts]
        fill_s = time.perf_counter() - started
        sharded = ShardedIndex(args.dim, one.spec, shards, bounds)
        sharded.apply_params(params)
        rows.append(_row(f"{n_shards} shards, in-process (fill {fill_s:.0f} s)", sharded, q, truth, recall_at))
        with tempfile.TemporaryDirectory() as tmp:
            sharded.save(Path(tmp) / "vectors.faiss")
            attach_shard_actors(sharded, shard_paths(Path(tmp) / "vectors.faiss", n_shards))
            rows.append(_row(f"{n_shards} shards, Ray actors", sharded, q, truth, recall_at))
            for a in sharded.actors:
                ray.kill(a)
    ray.shutdown()
    base = rows[0]
    print(table(["index", "QPS b=1", "QPS b=1000", "recall@10", "b=1 ratio", "b=1000 ratio"],
                [[*r, f"{r[1] / base[1]:.2f}", f"{r[2] / base[2]:.2f}"] for r in rows]))


def _row(name, index, q, truth, recall_at) -> list:
    _, found = index.search(q, 10)
    return [name, round(qps(index, q, 10, 1, budget_s=10), 1), round(qps(index, q, 10, 1000), 1),
            round(recall_at(found, truth, 10), 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ingest")
    a.add_argument("--encoder", default="xsearch-mini")
    a.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--repeats", type=int, default=1)
    b = sub.add_parser("query")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=384)
    b.add_argument("--queries", type=int, default=1000)
    b.add_argument("--spec", default="ivf")
    b.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    b.add_argument("--target-recall", type=float, default=0.95)
    args = ap.parse_args()
    (ingest if args.what == "ingest" else query)(args)


if __name__ == "__main__":
    main()
