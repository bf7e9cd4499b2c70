"""Issue 10, the collection side: writer lock, read-only opens that never write, damage detected, long-lived handles
that see new items, `xsearch verify [--repair]`, one-line errors for bad homes/names/specs, and kill -9 at every
commit point. Real files, real SQLite, real FAISS, real CLI processes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DEV_PHOTOS, ROOT
from xsearch import Collection
from xsearch.cli import app
from xsearch.config import INFO_FILE, META_FILE, VECTORS_FILE
from xsearch.engine import verify_collection
from xsearch.engine.locking import LOCK_FILE, OWNER_FILE
from xsearch.errors import CollectionBusy, DamagedCollection, XSearchWarning

pytestmark = pytest.mark.needs_data
runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "XSEARCH_WORKERS": "0"}


def cli(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def proc(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `xsearch` CLI in a new process."""
    return subprocess.run([sys.executable, "-m", "xsearch.cli", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: sha256 and mtime (root ignores chmod, so this is how "wrote nothing" is checked)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


@pytest.fixture
def built(home, photos, mini) -> Path:
    """A closed collection 'c' of the 4 photos and the note; returns the home."""
    with Collection.open(home, "c", encoder=mini, create=True) as col:
        col.add([photos], batch_size=2)
    return home


def hold_lock(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the collection's writer lock for ``seconds`` (prints 'locked' once it has it)."""
    code = ("import sys, time; from pathlib import Path; from xsearch.engine.locking import WriterLock; "
            f"lock = WriterLock(Path({str(folder)!r}), 'c'); lock.acquire(); print('locked', flush=True); "
            f"time.sleep({seconds}); lock.release()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


# ---- 5: writers are locked ----------------------------------------------------------------------------------
def test_second_writer_fails_at_once_naming_the_pid_and_readers_go_on(built, photos, mini):
    holder = hold_lock(built / "c", 60)
    try:
        started = time.monotonic()
        res = proc("rm", photos / "note.txt", "--home", built, "-c", "c")
        assert res.returncode == 1 and time.monotonic() - started < 30
        assert f"collection 'c' is being written by PID {holder.pid} (since " in res.stderr
        assert "use --wait to wait" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        col = Collection.open(built, "c", encoder=mini)
        for write in (lambda: col.remove([photos / "note.txt"]), lambda: col.tag(["cat"]),
                      lambda: col.rebuild_index(), lambda: col.add([photos])):
            with pytest.raises(CollectionBusy, match=f"PID {holder.pid}"):
                write()
        assert names(col.search(text="a rocket", k=1)) == ["rocket.jpg"]  # reading needs no lock
        col.close()
        hits = json.loads(proc("query", "a rocket", "--home", built, "-c", "c", "--json", "-k", "1").stdout)
        assert Path(hits["path"]).name == "rocket.jpg"
    finally:
        holder.kill()
        holder.wait()
    assert len(Collection.open(built, "c", read_only=True)) == 5  # nothing was removed


def test_wait_waits_for_the_writer_with_one_message(built, photos):
    holder = hold_lock(built / "c", 3)
    res = proc("rm", photos / "note.txt", "--home", built, "-c", "c", "--wait")
    holder.wait()
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("waiting for it to finish") == 1 and f"PID {holder.pid}" in res.stderr
    assert len(Collection.open(built, "c", read_only=True)) == 4


def test_a_killed_writer_leaves_no_stale_lock(built, photos):
    holder = hold_lock(built / "c", 600)
    holder.kill()  # SIGKILL: no cleanup ran, its owner record is still there
    holder.wait()
    assert json.loads((built / "c" / OWNER_FILE).read_text())["pid"] == holder.pid
    res = proc("rm", photos / "note.txt", "--home", built, "-c", "c")
    assert res.returncode == 0, res.stderr
    assert not (built / "c" / OWNER_FILE).exists()


# ---- 4: read-only really read-only --------------------------------------------------------------------------
def damage_scenarios(folder: Path):
    """Ways a reader may find a collection: clean, dirty (killed write), no vectors.faiss, garbled vectors.faiss."""
    yield "clean", lambda: None
    yield "dirty", lambda: _set_meta(folder, "dirty", "1")
    yield "no-faiss", lambda: (folder / VECTORS_FILE).unlink()
    yield "garbled", lambda: _garble(folder / VECTORS_FILE)


def _set_meta(folder: Path, key: str, value: str) -> None:
    conn = sqlite3.connect(folder / META_FILE)
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()


def _garble(path: Path, offset: int = 2000, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = os.urandom(min(size, len(data) - offset))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["clean", "dirty", "no-faiss", "garbled"])
def test_readers_never_write_and_search_a_correct_rebuild(built, case):
    folder = built / "c"
    with Collection.open(built, "c", read_only=True) as col:
        expected = [names(col.search(text=q, k=3)) for q in ("a rocket", "a cat", "coffee")]
    dict(damage_scenarios(folder))[case]()
    before = snapshot(folder)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        col = Collection.open(built, "c", read_only=True)
        got = [names(col.search(text=q, k=3)) for q in ("a rocket", "a cat", "coffee")]
        col.refresh()
        col.close()
    assert got == expected
    ours = [w for w in seen if issubclass(w.category, XSearchWarning)]
    assert len(ours) == (0 if case == "clean" else 1)
    res = proc("query", "a rocket", "--home", built, "-c", "c", "-k", "1", "--json")
    assert res.returncode == 0 and Path(json.loads(res.stdout)["path"]).name == "rocket.jpg"
    warned = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == (0 if case == "clean" else 1) and len(res.stderr.strip().splitlines()) == len(warned)
    assert proc("info", "--home", built, "-c", "c", "--json").returncode == 0
    verify_collection(built, "c", files=True)
    assert snapshot(folder) == before  # not a byte, not an mtime, no -wal/-shm/-journal created


def test_queries_work_on_read_only_storage(built, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    _set_meta(built / "c", "dirty", "1")  # as after a killed `xsearch index`
    if subprocess.run(["mount", "--bind", "-o", "ro", str(built), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount read-only here")
    try:
        if subprocess.run(["touch", str(ro / "x")], capture_output=True).returncode == 0:
            pytest.skip("the bind mount is not read-only")
        res = proc("query", "a rocket", "--home", ro, "-c", "c", "-k", "1", "--json")
        assert res.returncode == 0 and Path(json.loads(res.stdout)["path"]).name == "rocket.jpg", res.stderr
        assert "rebuilt in memory" in res.stderr
        assert verify_collection(ro, "c").ok
        res = proc("index", DEV_PHOTOS / "camera.jpg", "--home", ro, "-c", "c", "-q")
        assert res.returncode == 1 and "Read-only file system" in res.stderr, res.stderr
        res = proc("index", DEV_PHOTOS / "camera.jpg", "--home", ro, "-c", "new", "-q")  # a read-only home
        assert res.returncode == 1 and "Read-only file system" in res.stderr and len(res.stderr.splitlines()) == 1
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_missing_meta_sqlite_is_an_error_and_vectors_faiss_is_kept(built):
    folder = built / "c"
    (folder / META_FILE).unlink()
    faiss_bytes = (folder / VECTORS_FILE).read_bytes()
    res = proc("query", "a rocket", "--home", built, "-c", "c")
    assert res.returncode == 1 and f"{folder / META_FILE}: missing" in res.stderr
    for read_only in (True, False):
        with pytest.raises(DamagedCollection, match="meta.sqlite: missing"):
            Collection.open(built, "c", read_only=read_only)
    report = verify_collection(built, "c", repair=True)
    assert not report.ok and "cannot be rebuilt" in report.problems[0]
    assert (folder / VECTORS_FILE).read_bytes() == faiss_bytes and not (folder / META_FILE).exists()


# ---- 5: long-lived handles see committed changes ------------------------------------------------------------
def test_a_long_lived_handle_sees_new_items_after_refresh(built, mini, tmp_path):
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(DEV_PHOTOS / "astronaut.jpg", more / "astronaut.jpg")
    ro = Collection.open(built, "c", encoder=mini, read_only=True)
    assert ro.refresh() is False and len(ro) == 5
    with Collection.open(built, "c", encoder=mini) as writer:
        writer.add([more])
    assert ro.refresh() is True and len(ro) == 6
    assert names(ro.search(image=more / "astronaut.jpg", k=1)) == ["astronaut.jpg"]
    assert ro.refresh() is False
    ro.close()


# ---- 5: damage is detected -----------------------------------------------------------------------------------
def test_garbled_faiss_is_detected_readers_rebuild_in_memory_writers_save(built):
    folder = built / "c"
    assert verify_collection(built, "c").ok
    _garble(folder / VECTORS_FILE)
    report = verify_collection(built, "c")
    assert not report.ok and "does not match the checksum" in report.problems[0]
    res = proc("verify", "--home", built, "-c", "c")
    assert res.returncode == 1 and res.stdout.count("problem:") == 1
    with pytest.warns(XSearchWarning, match="checksum"):
        col = Collection.open(built, "c")  # a writer (the lock is free): rebuilds and saves
    col.close()
    assert verify_collection(built, "c").ok


def _garble_items_table(path: Path) -> None:
    """Overwrite a leaf page of the items table (rows with their vectors; the key index stays readable)."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    victim = conn.execute("SELECT pageno FROM dbstat WHERE name = 'items' AND pagetype = 'leaf' "
                          "ORDER BY pageno LIMIT 1").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    data[(victim - 1) * page_size + 8 : victim * page_size] = b"\xab" * (page_size - 8)
    path.write_bytes(bytes(data))


def test_corrupt_sqlite_pages_give_one_line_and_repair_recovers_everything(built, photos):
    folder = built / "c"
    with Collection.open(built, "c", read_only=True) as col:
        keys = sorted((r.path, r.modality) for r in col.items())
        expected = names(col.search(text="a rocket", k=3))
    _garble_items_table(folder / META_FILE)
    for args in (("query", "a rocket", "-k", "5", "-m", "any"), ("index", photos, "-q")):  # every row is read
        res = proc(*args, "--home", built, "-c", "c")
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "meta.sqlite: damaged" in res.stderr
        assert "xsearch verify --repair" in res.stderr
    res = proc("verify", "--home", built, "-c", "c")
    assert res.returncode == 1 and "meta.sqlite" in res.stdout
    res = proc("verify", "--repair", "--home", built, "-c", "c", "--json")
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"] and any("recovered" in r for r in report["repaired"]), res.stdout
    assert list(folder.glob("meta.sqlite.damaged-*"))
    with Collection.open(built, "c", read_only=True) as col:
        assert sorted((r.path, r.modality) for r in col.items()) == keys
        assert names(col.search(text="a rocket", k=3)) == expected
    assert verify_collection(built, "c", files=True).ok


def test_verify_finds_nan_vectors_and_changed_files_and_repair_reembeds(built, photos):
    folder = built / "c"
    conn = sqlite3.connect(folder / META_FILE)
    item_id = conn.execute("SELECT id FROM items WHERE path LIKE '%rocket.jpg'").fetchone()[0]
    conn.execute("UPDATE items SET vector = ? WHERE id = ?", (np.full(384, np.nan, np.float32).tobytes(), item_id))
    conn.commit()
    conn.close()
    (photos / "note.txt").write_text("something else entirely")
    report = verify_collection(built, "c", files=True)
    assert any("NaN" in p and "rocket.jpg" in p for p in report.problems)
    assert any("note.txt: changed since" in p for p in report.problems)
    assert verify_collection(built, "c").problems == [p for p in report.problems if "NaN" in p] + [
        p for p in report.problems if VECTORS_FILE in p]
    fixed = verify_collection(built, "c", repair=True)
    assert fixed.ok and any("re-embedded 1 of 1" in r for r in fixed.repaired)
    with Collection.open(built, "c", read_only=True) as col:
        assert names(col.search(text="a rocket", k=1)) == ["rocket.jpg"]


# ---- 6: small ones ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (("--home", "{file}"), "is a file, not a folder"),
    (("-c", "../x"), "use a plain name"),
    (("-c", "{abs}"), "use a plain name"),
    (("--index", "bogus"), "unknown index 'bogus'"),
])
def test_bad_homes_names_and_specs_are_one_line_errors_that_store_nothing(args, message, tmp_path, photos):
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "afile").write_text("x")
    fill = {"file": tmp_path / "afile", "abs": tmp_path / "elsewhere"}
    args = [a.format(**fill) for a in args]
    extra = [] if "--home" in args else ["--home", home]
    res = cli("index", photos, "-q", *extra, *args, ok=False)
    assert res.exit_code == 1 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert list(home.iterdir()) == [] and not (tmp_path / "x").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("text", ["null", "[]", "{}", "{\"name\": \"c\", \"encoder\": \"xsearch-mini\"}", "{not json"])
def test_malformed_collection_json_is_a_one_line_error_and_repairable(built, text):
    (built / "c" / INFO_FILE).write_text(text)
    res = cli("query", "a cat", "--home", built, "-c", "c", ok=False)
    assert res.exit_code == 1 and "collection.json" in res.output and len(res.output.strip().splitlines()) == 1
    report = verify_collection(built, "c", repair=True)
    assert report.ok and any("rewritten" in r for r in report.repaired)
    assert len(Collection.open(built, "c", read_only=True)) == 5


def test_leftover_temp_files_are_cleaned_by_the_next_writer_not_by_readers(built, photos):
    folder = built / "c"
    leftover = folder / ".vectors.faiss.abc123.tmp"
    leftover.write_bytes(b"half a file")
    Collection.open(built, "c", read_only=True).close()
    cli("query", "a cat", "--home", built, "-c", "c")
    assert leftover.exists() and any("temporary files" in n for n in verify_collection(built, "c").notes)
    cli("rm", photos / "note.txt", "--home", built, "-c", "c")
    assert not leftover.exists() and (folder / LOCK_FILE).exists()


# ---- 7: kill -9 at every commit point ----------------------------------------------------------------------
def state(home: Path, name: str = "c") -> dict:
    """What a collection holds, independent of ids and times: items (path, modality, sha256, vector) and top hits."""
    with Collection.open(home, name, read_only=True) as col:
        rows = col.items()
        vecs = col.vectors([r.id for r in rows])
        items = sorted((r.path, r.modality, r.sha256, r.text, tuple(np.round(v, 5))) for r, v in zip(rows, vecs))
        hits = [names(col.search(vector=v, k=3)) for v in vecs]
        return {"items": items, "hits": sorted(hits), "tags": sorted(
            (col.item(i).path, tuple(t for t, _ in pairs)) for i, pairs in col.tags_of([r.id for r in rows]).items())}


KILL_CASES = {
    "index": lambda photos: ("index", photos, "--batch-size", "2", "-q"),
    "rm": lambda photos: ("rm", photos / "sub", photos / "note.txt", "-q"),
    "reindex": lambda photos: ("reindex", "--index", "hnsw", "-q"),
    "verify --repair": lambda photos: ("verify", "--repair"),
}


def _prepare(case: str, home: Path, photos: Path) -> None:
    """The collection each command starts from (`index`: two of the photos already in)."""
    if case == "index":
        assert proc("index", photos / "chelsea.jpg", photos / "coffee.jpg", "--home", home, "-c", "c", "-q").returncode == 0
        return
    assert proc("index", photos, "--home", home, "-c", "c", "-q").returncode == 0
    if case == "verify --repair":
        _garble(home / "c" / VECTORS_FILE)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_at_every_commit_point_then_rerun_gives_the_uninterrupted_result(case, photos, tmp_path):
    base = tmp_path / "base"
    _prepare(case, base, photos)
    args = KILL_CASES[case](photos)
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    trace = tmp_path / "trace.txt"
    res = proc(*args, "--home", clean, "-c", "c", env={"XSEARCH_TEST_TRACE": str(trace)})
    assert res.returncode == 0, res.stderr
    points = trace.read_text().split()
    assert len(points) >= 3
    want = state(clean)
    for n in range(1, len(points) + 1):
        home = tmp_path / f"kill{n}"
        shutil.copytree(base, home)
        res = proc(*args, "--home", home, "-c", "c", env={"XSEARCH_TEST_KILL_AT": f"any:{n}"})
        assert res.returncode == 137, (n, res.stderr)
        if case != "verify --repair":
            report = verify_collection(home, "c")
            assert report.ok, (n, points[n - 1], report.problems)
        res = proc(*args, "--home", home, "-c", "c")
        nothing_left = case == "rm" and "not in collection" in res.stderr  # the kill came after the delete
        assert res.returncode == 0 or nothing_left, (n, res.stderr)
        after = verify_collection(home, "c", files=True)
        assert after.ok and not after.notes, (n, points[n - 1], after.problems, after.notes)
        assert state(home) == want, (n, points[n - 1])
        shutil.rmtree(home)


# ---- 5: concurrency ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_indexer_readers_and_a_second_writer_run_together(home, photos, mini, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i, src in enumerate(sorted(DEV_PHOTOS.glob("*.jpg")) * 4):
        shutil.copy(src, big / f"{i:02d}-{src.name}")
    with Collection.open(home, "c", encoder=mini, create=True) as col:
        col.add([photos])
    indexer = subprocess.Popen([sys.executable, "-m", "xsearch.cli", "index", big, "--home", home, "-c", "c",
                                "--batch-size", "2", "-q"], stderr=subprocess.PIPE, text=True, env=ENV)
    errors: list[str] = []
    counts: list[int] = []
    stop = threading.Event()

    def api_reader() -> None:
        long_lived = Collection.open(home, "c", encoder=mini, read_only=True)
        while not stop.is_set():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", XSearchWarning)
                    long_lived.refresh()
                    counts.append(len(long_lived))
                    assert long_lived.search(text="a rocket", k=1)
                    with Collection.open(home, "c", encoder=mini, read_only=True) as fresh:
                        assert fresh.search(text="a cat", k=3)
            except Exception as exc:  # noqa: BLE001 - every reader error is a failure of the test
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)
        long_lived.close()

    thread = threading.Thread(target=api_reader)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (home / "c" / OWNER_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = proc("rm", photos / "note.txt", "--home", home, "-c", "c")
        cli_reads = [proc("query", "a rocket", "--home", home, "-c", "c", "-k", "1", "--json") for _ in range(2)]
        waited = proc("rm", photos / "note.txt", "--home", home, "-c", "c", "--wait")
        assert indexer.wait(timeout=300) == 0, indexer.stderr.read()
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert second.returncode == 1 and "is being written by PID" in second.stderr
    assert all(r.returncode == 0 and json.loads(r.stdout)["path"] for r in cli_reads), [r.stderr for r in cli_reads]
    assert waited.returncode == 0, waited.stderr
    assert max(counts) > min(counts)  # the long-lived handle saw the collection grow
    assert verify_collection(home, "c", files=True).ok
    assert len(Collection.open(home, "c", read_only=True)) == 5 - 1 + 80
