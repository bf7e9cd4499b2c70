"""Query latency: warm p50/p99 through the Python API, and cold `xsearch query` wall time.

    python benchmarks/bench_query.py [--encoder xsearch-mini] [--repeats 200] [--cold 3]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, machine, percentiles, photo_folder, table  # noqa: E402

from xsearch import Collection  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="xsearch-mini")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--cold", type=int, default=3)
    args = ap.parse_args()
    queries = [r["query"] for r in csv.DictReader(open(DATA / "dev-photos" / "queries.csv"))]
    with tempfile.TemporaryDirectory() as home:
        folder = photo_folder(Path(home) / "photos")
        col = Collection.open(home, "bench", encoder=args.encoder, create=True)
        col.add([folder])
        image = next(iter(sorted(folder.glob("*.jpg"))))
        vec = col.encoder.encode_text(["a cat"])[0]
        rows = []
        for name, fn in [
            ("text query (encode + search)", lambda: col.search(text=queries[np.random.randint(len(queries))], k=10)),
            ("image query (decode + encode + search)", lambda: col.search(image=image, k=10)),
            ("vector search only", lambda: col.search(vector=vec, k=10)),
        ]:
            fn()
            p50, p99 = percentiles(timed(fn, args.repeats))
            rows.append([name, len(col), f"{p50:.1f}", f"{p99:.1f}"])
        col.close()
        env = dict(os.environ, XSEARCH_HOME=home)
        cold = timed(lambda: subprocess.run([sys.executable, "-m", "xsearch.cli", "query", "a cat", "-c", "bench",
                                             "--json"], env=env, check=True, capture_output=True), args.cold)
        rows.append(["cold `xsearch query` (new process)", len(col), f"{np.median(cold):.0f}", f"{max(cold):.0f}"])
    print(f"# query latency, encoder {args.encoder}; {machine()}\n")
    print(table(["what", "items", "p50 ms", "p99 ms (cold: max)"], rows))


if __name__ == "__main__":
    main()
