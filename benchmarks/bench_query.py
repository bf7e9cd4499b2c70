"""Query latency: warm p50/p99 through the Python API, and cold `xsearch query` wall time.

    python benchmarks/bench_query.py [--encoder xsearch-mini] [--repeats 200] [--cold 5]

Cold rows run `xsearch query "a cat"` in new processes, alternating the default text runtime (numpy for a few
texts, no torch import) with ``XSEARCH_TEXT_RUNTIME=torch`` (the torch BERT, i.e. the path before the numpy
runtime existed), so both see the same machine load; ratio = median wall of the default / median wall of torch.
CPU s = user + system time of the child. The load average is printed because the CPU may be shared.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
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
    ap.add_argument("--cold", type=int, default=5)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
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
        cold = cold_queries(home, args.cold)
        base = np.median(cold["torch"]["wall"])
        for runtime, label in (("torch", "cold `xsearch query`, torch text tower (before)"),
                               ("default", "cold `xsearch query`, default (numpy text tower)")):
            wall, cpu = cold[runtime]["wall"], cold[runtime]["cpu"]
            rows.append([label, len(col), f"{np.median(wall):.0f}", f"{max(wall):.0f}",
                         f"{np.median(cpu) / 1000:.2f}", f"{np.median(wall) / base:.2f}"])
        for row in rows[:3]:
            row += ["-", "-"]
    print(f"# query latency, encoder {args.encoder}; {machine()}; load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end\n")
    print(table(["what", "items", "p50 ms", "p99 ms (cold: max)", "cold CPU s", "cold ratio"], rows))
    if args.encoder == "xsearch-mini":
        print(f"\nnumpy vs torch text vectors on {len(queries) + 1} queries: max abs diff {runtime_diff(queries):.1e}")


def cold_queries(home: str, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU ms of `xsearch query` in new processes, default runtime and torch alternating."""
    out: dict[str, dict[str, list[float]]] = {r: {"wall": [], "cpu": []} for r in ("default", "torch")}
    cmd = [sys.executable, "-m", "xsearch.cli", "query", "a cat", "-c", "bench", "--json"]
    for _ in range(repeats):
        for runtime in out:
            env = dict(os.environ, XSEARCH_HOME=home)
            env.pop("XSEARCH_TEXT_RUNTIME", None)
            if runtime == "torch":
                env["XSEARCH_TEXT_RUNTIME"] = "torch"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            out[runtime]["wall"].append((time.perf_counter() - start) * 1000)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            out[runtime]["cpu"].append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return out


def runtime_diff(queries: list[str]) -> float:
    """Max abs difference between the numpy and torch MiniLM runtimes on the benchmark queries."""
    from xsearch.encoders.mini import MiniLMText

    text = MiniLMText("cpu")
    texts = queries + ["a cat"]
    return float(np.abs(text.runtime("numpy").encode(texts) - text.runtime("torch").encode(texts)).max())


if __name__ == "__main__":
    main()
