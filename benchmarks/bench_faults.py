"""Faults on the collection side (issue 10): kill -9 at every commit point, damaged files, and concurrent processes.

    python benchmarks/bench_faults.py [--photos 12] [--readers-s 0]

Kill table: for `index`, `rm`, `reindex` and `verify --repair` the command first runs uninterrupted with
XSEARCH_TEST_TRACE (which lists its commit points: SQLite commits and atomic file replacements); then, for every
point N, a copy of the starting collection runs it with XSEARCH_TEST_KILL_AT=any:N (the process os._exit()s there).
"survived" counts points after which `xsearch verify` found no damage (only notes of an interrupted write), the same
command re-run exited normally, `verify --files` was then clean, and the collection held exactly what the
uninterrupted run produced (items, vectors, hits); "lost" counts items of that result missing after the re-run.

Damage table: each case damages a copy of an indexed collection, then reports whether `query` still answered
correctly (same top hits as before the damage) without writing a byte, what `verify` said, and how many items
`verify --repair` brought back.

Concurrency: an `xsearch index` of 4x the photos (batches of 2) runs while a read-only API handle (refresh + search)
and a fresh read-only open search in a loop, `xsearch query` runs in new processes, and a second writer (`xsearch rm`)
tries without and then with --wait.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, machine, table  # noqa: E402

from xsearch.engine import Collection, verify_collection  # noqa: E402
from xsearch.errors import XSearchWarning  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "XSEARCH_WORKERS": "0", "HF_HUB_OFFLINE": "1"}


def xsearch(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xsearch.cli", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})})


def state(home: Path) -> dict:
    """Items (path, modality, sha256, rounded vector) and each item's top-3 hits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XSearchWarning)
        with Collection.open(home, "c", read_only=True) as col:
            rows = col.items()
            vecs = col.vectors([r.id for r in rows])
            items = {(r.path, r.modality, r.sha256): tuple(np.round(v, 5)) for r, v in zip(rows, vecs)}
            hits = sorted(tuple(Path(h.path).name for h in col.search(vector=v, k=3)) for v in vecs)
    return {"items": items, "hits": hits}


def snapshot(folder: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def garble(path: Path, offset: int = 2000, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = os.urandom(min(size, len(data) - offset))
    path.write_bytes(bytes(data))


# ---- kill -9 at every commit point ---------------------------------------------------------------------------
def kill_rows(photos: Path, work: Path) -> list[list]:
    cases = {
        "index": (lambda h: xsearch("index", *sorted(photos.iterdir())[:2], "--home", h, "-c", "c", "-q"),
                  ("index", photos, "--batch-size", "2", "-q")),
        "rm": (lambda h: xsearch("index", photos, "--home", h, "-c", "c", "-q"),
               ("rm", *sorted(photos.iterdir())[::2], "-q")),
        "reindex": (lambda h: xsearch("index", photos, "--home", h, "-c", "c", "-q"), ("reindex", "--index", "hnsw")),
        "verify --repair": (lambda h: (xsearch("index", photos, "--home", h, "-c", "c", "-q"),
                                       garble(h / "c" / "vectors.faiss")), ("verify", "--repair")),
    }
    rows = []
    for name, (prepare, args) in cases.items():
        base = work / f"base-{name.split()[0]}"
        prepare(base)
        clean, trace = work / "clean", work / "trace.txt"
        shutil.copytree(base, clean)
        trace.unlink(missing_ok=True)
        xsearch(*args, "--home", clean, "-c", "c", env={"XSEARCH_TEST_TRACE": str(trace)})
        points = trace.read_text().split()
        want = state(clean)
        shutil.rmtree(clean)
        survived = lost = 0
        for n in range(1, len(points) + 1):
            home = work / "k"
            shutil.copytree(base, home)
            killed = xsearch(*args, "--home", home, "-c", "c", env={"XSEARCH_TEST_KILL_AT": f"any:{n}"})
            undamaged = name == "verify --repair" or verify_collection(home, "c").ok
            rerun = xsearch(*args, "--home", home, "-c", "c")
            after = verify_collection(home, "c", files=True)
            got = state(home)
            lost += len(set(want["items"]) - set(got["items"]))
            ok_exit = rerun.returncode == 0 or (name == "rm" and "not in collection" in rerun.stderr)
            survived += (killed.returncode == 137 and undamaged and ok_exit and after.ok and not after.notes
                         and got == want)
            shutil.rmtree(home)
        kinds = {p: points.count(p) for p in sorted(set(points))}
        rows.append([name, ", ".join(f"{v} {k}" for k, v in kinds.items()), len(points), survived, lost])
    return rows


# ---- damaged files ------------------------------------------------------------------------------------------------
def damage_rows(photos: Path, work: Path) -> list[list]:
    base = work / "damage-base"
    xsearch("index", photos, "--home", base, "-c", "c", "-q")
    total = len(state(base)["items"])
    expected = xsearch("query", "a cat", "--home", base, "-c", "c", "--json", "-k", "3").stdout

    def leaf(folder: Path) -> None:
        path = folder / "meta.sqlite"
        conn = sqlite3.connect(path)
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        page = conn.execute("SELECT pageno FROM dbstat WHERE name='items' AND pagetype='leaf' LIMIT 1").fetchone()[0]
        conn.close()
        data = bytearray(path.read_bytes())
        data[(page - 1) * size + 8 : page * size] = b"\xab" * (size - 8)
        path.write_bytes(bytes(data))

    def nan(folder: Path) -> None:
        conn = sqlite3.connect(folder / "meta.sqlite")
        conn.execute("UPDATE items SET vector = ? WHERE id = 1", (np.full(384, np.nan, np.float32).tobytes(),))
        conn.commit()
        conn.close()

    def dirty(folder: Path) -> None:
        conn = sqlite3.connect(folder / "meta.sqlite")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'dirty'")
        conn.commit()
        conn.close()
        (folder / "vectors.faiss").unlink()

    cases = {
        "4 KB garbled in vectors.faiss": lambda f: garble(f / "vectors.faiss"),
        "killed writer (dirty, no vectors.faiss)": dirty,
        "an items leaf page of meta.sqlite garbled": leaf,
        "NaN stored vector": nan,
        "collection.json = null": lambda f: (f / "collection.json").write_text("null"),
        "meta.sqlite deleted": lambda f: (f / "meta.sqlite").unlink(),
    }
    rows = []
    for name, damage in cases.items():
        home = work / "d"
        shutil.copytree(base, home)
        damage(home / "c")
        before = snapshot(home)
        q = xsearch("query", "a cat", "--home", home, "-c", "c", "--json", "-k", "3")
        answer = "same hits" if q.returncode == 0 and q.stdout == expected else (
            f"exit {q.returncode}: {q.stderr.strip().splitlines()[-1][:60]}" if q.returncode else "other hits")
        wrote = "no" if snapshot(home) == before else "YES"
        v = xsearch("verify", "--home", home, "-c", "c", "--json")
        found = len(json.loads(v.stdout)["problems"]) if v.stdout.startswith("{") else v.stderr.strip()[:40]
        r = xsearch("verify", "--repair", "--home", home, "-c", "c", "--json")
        repaired = json.loads(r.stdout) if r.stdout.startswith("{") else {"ok": False}
        kept = len(state(home)["items"]) if (home / "c" / "meta.sqlite").exists() and repaired["ok"] else 0
        faiss_kept = (home / "c" / "vectors.faiss").exists()
        rows.append([name, answer, wrote, f"exit {v.returncode}, {found} problems", "clean" if repaired["ok"] else
                     f"exit {r.returncode}", f"{kept}/{total}", "yes" if faiss_kept else "no"])
        shutil.rmtree(home)
    return rows


# ---- concurrency ------------------------------------------------------------------------------------------------
def concurrency_row(photos: Path, work: Path) -> list:
    home, big = work / "conc", work / "big"
    big.mkdir()
    for i, src in enumerate(sorted(photos.iterdir()) * 4):
        shutil.copy(src, big / f"{i:03d}-{src.name}")
    xsearch("index", photos, "--home", home, "-c", "c", "-q")
    indexer = subprocess.Popen([sys.executable, "-m", "xsearch.cli", "index", big, "--home", home, "-c", "c",
                                "--batch-size", "2", "-q"], stderr=subprocess.PIPE, text=True, env=ENV)
    stop, errors, searches, sizes = threading.Event(), [], [0], set()

    def reader() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", XSearchWarning)
            handle = Collection.open(home, "c", read_only=True)
            while not stop.is_set():
                try:
                    handle.refresh()
                    sizes.add(len(handle))
                    handle.search(vector=handle.vectors([handle.items()[0].id])[0], k=3)
                    with Collection.open(home, "c", read_only=True) as fresh:
                        fresh.search(vector=fresh.vectors([fresh.items()[0].id])[0], k=3)
                    searches[0] += 2
                except Exception as exc:  # noqa: BLE001 - counted
                    errors.append(f"{type(exc).__name__}: {exc}")
            handle.close()

    thread = threading.Thread(target=reader)
    thread.start()
    while not (home / "c" / ".xsearch-writer.json").exists() and indexer.poll() is None:
        time.sleep(0.05)
    refused = xsearch("rm", sorted(photos.iterdir())[0], "--home", home, "-c", "c")
    cli = [xsearch("query", "a cat", "--home", home, "-c", "c", "--json") for _ in range(3)]
    waited = xsearch("rm", sorted(photos.iterdir())[0], "--home", home, "-c", "c", "--wait")
    indexer.wait()
    stop.set()
    thread.join()
    report = verify_collection(home, "c", files=True)
    return [f"{searches[0]} API + {len(cli)} CLI", len(errors) + sum(c.returncode != 0 for c in cli),
            f"{len(sizes)} sizes seen", "refused" if refused.returncode == 1 and "being written by" in refused.stderr
            else f"exit {refused.returncode}", "done" if waited.returncode == 0 else f"exit {waited.returncode}",
            "clean" if report.ok and not report.notes else "; ".join(report.problems + report.notes)[:80]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=12, help="dev-photos to index")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        for p in sorted((DATA / "dev-photos").glob("*.jpg"))[: args.photos]:
            shutil.copy(p, photos / p.name)
        (photos / "note.txt").write_text("Shopping list: milk, bread and coffee beans.")
        print(f"machine: {machine()}; {args.photos} photos + 1 note\n")
        started = time.perf_counter()
        print(table(["command", "commit points", "kill points tried", "survived", "items lost"],
                    kill_rows(photos, work)))
        print()
        print(table(["damage", "`query`", "query wrote a byte", "`verify`", "`verify --repair`", "items after repair",
                     "vectors.faiss kept"], damage_rows(photos, work)))
        print()
        print(table(["reader searches", "reader errors", "long-lived handle", "2nd writer", "2nd writer --wait",
                     "verify --files after"], [concurrency_row(photos, work)]))
        print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
