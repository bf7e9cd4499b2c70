"""HTTP load on `xsearch serve` (127.0.0.1 only) vs the same text queries through the Python API, same run.

    python benchmarks/bench_serve.py [--items 10000] [--requests 600] [--clients 1 8 32] [--cap 60]

Builds (once, cached in benchmarks/_data/serve) a collection of --items short text files, starts `xsearch serve` on a
free loopback port in a subprocess, and for each client count sends a fixed number of `GET /api/search?q=...&k=10`
requests (stopping early at --cap seconds), printing requests/s, p50/p99 latency and errors (must be 0).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, percentiles, table  # noqa: E402

from xsearch import Collection  # noqa: E402

SUBJECTS = ["a cat", "a dog", "a red car", "an old bicycle", "a violin", "a lighthouse", "two children", "a chef",
            "a fishing boat", "a mountain goat", "a rocket", "a bowl of soup", "a wooden bridge", "a jazz trio",
            "a steam train", "a heron", "an umbrella", "a tractor", "a snowman", "a market stall"]
VERBS = ["sleeping", "standing", "waiting", "moving slowly", "shining", "resting", "playing", "drifting"]
PLACES = ["on a beach", "in the rain", "at night", "in a busy street", "under a bridge", "in a garden",
          "near the harbour", "on a hill", "in the snow", "inside a workshop"]


def sentence(rng: np.random.Generator) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}, photo {rng.integers(1e6)}"


def build(home: Path, n: int) -> Collection:
    """A collection of ``n`` one-line text files (embedded once, reused across runs)."""
    folder = home.parent / f"texts-{n}"
    if not folder.is_dir():
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:06d}.txt").write_text(sentence(rng))
    col = Collection.open(home, "bench", create=True)
    if len(col) != n:
        col.add([folder])
    col.close()
    return Collection.open(home, "bench", read_only=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xsearch.cli", "serve", "--home", str(home), "-c", "bench",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/ready").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


async def load(url: str, queries: list[str], clients: int, total: int, cap: float) -> dict:
    """``clients`` concurrent loops sending ``total`` requests in all (or until ``cap`` seconds)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < total and time.perf_counter() - start < cap:
            q = queries[sent % len(queries)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.get(url, params={"q": q, "k": 10})
                ok = r.status_code == 200 and len(r.json()["hits"]) == 10
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"n": len(latencies), "rps": len(latencies) / wall, "lat": latencies, "errors": errors, "wall": wall}


def python_api(col: Collection, queries: list[str], threads: int, total: int) -> dict:
    """The same queries through ``Collection.search`` in this process, on ``threads`` threads."""
    def one(q: str) -> float:
        t0 = time.perf_counter()
        assert len(col.search(text=q, k=10, modality="text")) == 10
        return (time.perf_counter() - t0) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        lat = list(pool.map(one, [queries[i % len(queries)] for i in range(total)]))
    wall = time.perf_counter() - start
    return {"n": total, "rps": total / wall, "lat": lat, "errors": 0, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=600, help="requests per client count")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per client count at most")
    args = ap.parse_args()
    home = ROOT / "benchmarks" / "_data" / "serve" / "home"
    t0 = time.perf_counter()
    col = build(home, args.items)
    print(f"collection: {len(col)} text items ({col.index_spec.factory}), ready in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(1)
    queries = [sentence(rng).rsplit(",", 1)[0] for _ in range(300)]
    # the server's text queries return images and audio by default; ask for text like the Python API does
    port = free_port()
    log = home.parent / "serve.log"
    proc = start_server(home, port, log)
    url = f"http://127.0.0.1:{port}/api/search?modality=text"
    rows = []
    try:
        asyncio.run(load(url, queries, 4, 40, 30))  # warm-up: threads, connections, allocator
        for clients in args.clients:
            res = asyncio.run(load(url, queries, clients, args.requests, args.cap))
            p50, p99 = percentiles(res["lat"])
            rows.append([f"HTTP, {clients} client{'s' if clients > 1 else ''}", res["n"], f"{res['rps']:.1f}",
                         f"{p50:.1f}", f"{p99:.1f}", res["errors"]])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    python_api(col, queries, 1, 40)  # warm-up
    for threads in (1, 8):
        res = python_api(col, queries, threads, args.requests)
        p50, p99 = percentiles(res["lat"])
        rows.append([f"Python API, {threads} thread{'s' if threads > 1 else ''}", res["n"], f"{res['rps']:.1f}",
                     f"{p50:.1f}", f"{p99:.1f}", res["errors"]])
    col.close()
    print(f"\n{machine()}; {args.items} items; GET /api/search?q=...&k=10 (text encode + FAISS + SQLite + JSON); "
          f"client and server share the machine\n")
    print(table(["path", "requests", "req/s", "p50 ms", "p99 ms", "errors"], rows))
    base = float(rows[-2][2])
    http1 = float(rows[0][2])
    print(f"\nHTTP with 1 client runs at {http1 / base:.2f}x the single-thread Python API throughput")


if __name__ == "__main__":
    main()
