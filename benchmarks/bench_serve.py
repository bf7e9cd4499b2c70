"""HTTP load on `xsearch serve` (127.0.0.1 only) vs the same text queries through the Python API, same run.

    python benchmarks/bench_serve.py [--items 10000] [--requests 600] [--clients 1 8 32] [--rounds 3] [--cap 60]

Builds (once, cached in benchmarks/_data/serve) a collection of --items short text files, starts `xsearch serve` on a
free loopback port in a subprocess, and for each client count sends a fixed number of `GET /api/search?q=...&k=10`
requests (stopping early at --cap seconds), alternating in rounds with the same queries through Collection.search on
as many threads, printing requests/s, p50/p99 latency and errors (must be 0).
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `xsearch serve` sets it, so both paths run alike
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


async def load(url: str, queries: list[str], clients: int, total: int, cap: float, path_param: bool = False) -> dict:
    """``clients`` concurrent loops sending ``total`` requests in all (or until ``cap`` seconds)."""
    import httpx

    latencies: list[float] = []
    engine: list[float] = []  # took_ms as the server measured it around Collection.search
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
                if path_param:
                    r = await client.get(url.format(q))
                    ok = r.status_code == 200 and r.json()["id"] == int(q)
                else:
                    r = await client.get(url, params={"q": q, "k": 10})
                    ok = r.status_code == 200 and len(r.json()["hits"]) == 10
                    if ok:
                        engine.append(r.json()["took_ms"])
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"n": len(latencies), "rps": len(latencies) / wall, "lat": latencies, "errors": errors, "wall": wall,
            "engine": engine}


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
    return {"n": total, "rps": total / wall, "lat": lat, "errors": 0, "wall": wall, "engine": lat}


def merged(parts: list[dict]) -> dict:
    """One result from several rounds: all latencies, total requests over total wall time."""
    lat = [x for p in parts for x in p["lat"]]
    return {"n": len(lat), "rps": len(lat) / sum(p["wall"] for p in parts), "lat": lat,
            "errors": sum(p["errors"] for p in parts), "engine": [x for p in parts for x in p["engine"]]}


def row(label: str, res: dict) -> list:
    p50, p99 = percentiles(res["lat"])
    inner = f"{percentiles(res['engine'])[0]:.1f}" if res["engine"] else "-"
    return [label, res["n"], f"{res['rps']:.1f}", f"{p50:.1f}", f"{p99:.1f}", inner, res["errors"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=600, help="requests per client count (and per path)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="HTTP and Python API alternate in this many rounds")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per client count and path at most")
    args = ap.parse_args()
    home = ROOT / "benchmarks" / "_data" / "serve" / "home"
    t0 = time.perf_counter()
    col = build(home, args.items)
    print(f"collection: {len(col)} text items ({col.index_spec.factory}), ready in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(1)
    queries = [sentence(rng).rsplit(",", 1)[0] for _ in range(300)]
    port = free_port()
    proc = start_server(home, port, home.parent / "serve.log")
    base = f"http://127.0.0.1:{port}/api"
    url = f"{base}/search?modality=text"  # text -> text, as the Python API calls below
    per_round = max(1, args.requests // args.rounds)
    cap = args.cap / args.rounds
    http_rows, api_rows = [], []
    try:
        asyncio.run(load(url, queries, 4, 40, 30))  # warm-up: threads, connections, allocator
        python_api(col, queries, 1, 20)
        for clients in args.clients:
            http, api = [], []
            for _ in range(args.rounds):  # alternate, so both paths see the same background load
                http.append(asyncio.run(load(url, queries, clients, per_round, cap)))
                api.append(python_api(col, queries, clients, per_round))
            plural = "s" if clients > 1 else ""
            http_rows.append(row(f"HTTP, {clients} client{plural}", merged(http)))
            api_rows.append(row(f"Python API, {clients} thread{plural}", merged(api)))
        ids = [str(r.id) for r in col.items()[:500]]
        items = asyncio.run(load_items(base, ids, 8, args.requests, args.cap))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    col.close()
    print(f"\n{machine()}; {args.items} items; GET /api/search?q=...&k=10 (text encode + FAISS + SQLite + JSON) "
          f"vs Collection.search(text=..., k=10); client and server share the machine; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    rows = [r for pair in zip(http_rows, api_rows) for r in pair] + [row("HTTP, 8 clients, GET /api/items/{id}", items)]
    print(table(["path", "requests", "req/s", "p50 ms", "p99 ms", "search p50 ms", "errors"], rows))
    ratios = ", ".join(f"{c}: {float(h[2]) / float(a[2]):.2f}x" for c, h, a in zip(args.clients, http_rows, api_rows))
    print(f"\nHTTP / Python API throughput at the same concurrency: {ratios}")


async def load_items(base: str, ids: list[str], clients: int, total: int, cap: float) -> dict:
    """Metadata requests (no encoder): the cost of the HTTP layer itself."""
    return await load(f"{base}/items/" + "{}", ids, clients, total, cap, path_param=True)


if __name__ == "__main__":
    main()
