"""Checking and recovering a damaged ``meta.sqlite`` (the equivalent of ``sqlite3 .recover``, in Python).

Rows are copied table by table in rowid ranges; a range that hits a damaged page is split until single rows,
so everything readable is kept. Items whose table rows are lost may still be named by the unique ``key`` index
(a separate b-tree): their keys are returned so the engine can re-embed those files.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine

from ..atomic import kill_point
from .models import Base
from .repo import _uri

TABLES = ("meta", "items", "tags", "staged")
MAX_FAILED_PROBES = 200_000  # give up splitting ranges after this many failed reads (a table whose root is gone)


def integrity_problems(path: str | os.PathLike[str], limit: int = 5) -> list[str]:
    """``PRAGMA integrity_check`` of a database, read-only (no journal or WAL file created): [] when it is ok."""
    path = Path(path)
    try:
        conn = sqlite3.connect(_uri(path, read_only=True, create=False), uri=True)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({limit + 1})")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"{path.name}: {exc}"]
    if rows == ["ok"]:
        return []
    rows = [line for r in rows for line in str(r).splitlines() if line.strip() and not line.startswith("***")]
    out = [f"{path.name}: {r}" for r in rows[:limit]]
    return out + ([f"{path.name}: ... more damage"] if len(rows) > limit else [])


@dataclass
class Recovery:
    """What :func:`recover` copied and what it could not."""

    copied: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    lost: dict[str, int] = field(default_factory=dict)  # table -> rowids that could not be read
    lost_items: dict[int, str] = field(default_factory=dict)  # lost item id -> its key (from the key index)
    placeholders: list[int] = field(default_factory=list)  # lost file items put back as rows waiting for a vector
    damaged_copy: Path | None = None


PENDING = "pending"  # modality of a placeholder row: the engine re-embeds its file (or deletes the row)


def recover(path: str | os.PathLike[str], stamp: str, dim: int) -> Recovery:
    """Rebuild ``path`` from what is readable in it; the damaged original is kept as ``<path>.damaged-<stamp>``.

    Lost file items named by the key index come back as placeholder rows (same id, modality ``pending``, zero
    vector of ``dim``) so their captions and tags keep pointing at them once the engine has re-embedded the file."""
    path = Path(path)
    out = Recovery(damaged_copy=path.with_name(f"{path.name}.damaged-{stamp}"))
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy2(f"{path}{suffix}", f"{out.damaged_copy}{suffix}")
    fresh = path.with_name(f".{path.name}.recover.tmp")
    fresh.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{fresh}")
    Base.metadata.create_all(engine)
    engine.dispose()
    src = sqlite3.connect(_uri(path, read_only=True, create=False), uri=True)
    dst = sqlite3.connect(str(fresh))
    try:
        for table in TABLES:
            _copy_table(src, dst, table, out)
        kept = {r[0] for r in dst.execute("SELECT id FROM items")}
        out.lost_items = {i: k for i, k in _index_keys(src).items() if i not in kept}
        zero = bytes(4 * dim)
        for item_id, key in sorted(out.lost_items.items()):
            if "#caption:" not in key:
                dst.execute("INSERT INTO items (id, key, path, modality, created, updated, vector) "
                            "VALUES (?, ?, ?, ?, datetime('now'), datetime('now'), ?)",
                            (item_id, key, key, PENDING, zero))
                out.placeholders.append(item_id)
        for table in ("tags", "staged"):
            dst.execute(f"DELETE FROM {table} WHERE item_id NOT IN (SELECT id FROM items)")
        dst.execute("UPDATE items SET parent_id = NULL WHERE parent_id NOT IN (SELECT id FROM items)")
        dst.commit()
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        src.close()
        dst.close()
    with open(fresh, "rb+") as fh:
        os.fsync(fh.fileno())
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(fresh, path)
    kill_point("file")
    return out


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, out: Recovery) -> None:
    """Copy every readable row of ``table``, splitting rowid ranges around damaged pages."""
    try:
        cols = [c for c in _columns(src, table) if c in _columns(dst, table)]
    except sqlite3.DatabaseError:
        cols = _columns(dst, table)
    names = ", ".join(cols)
    insert = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' for _ in cols)})"
    try:
        top = int(src.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0)
    except sqlite3.DatabaseError:
        top = 1 << 31
    copied, failed = 0, 0
    stack = [(1, top)] if top else []
    lost: list[int] = []
    while stack:
        lo, hi = stack.pop()
        try:
            rows = src.execute(f"SELECT {names} FROM {table} WHERE rowid BETWEEN ? AND ?", (lo, hi)).fetchall()
        except sqlite3.DatabaseError:
            failed += 1
            if lo == hi or failed > MAX_FAILED_PROBES:
                lost.extend(range(lo, hi + 1) if hi - lo < 10_000 else [])
                continue
            mid = (lo + hi) // 2
            stack += [(mid + 1, hi), (lo, mid)]
            continue
        dst.executemany(insert, rows)
        copied += len(rows)
    out.copied[table] = copied
    out.lost[table] = len(lost)


def _index_keys(src: sqlite3.Connection) -> dict[int, str]:
    """id -> key of every item named by the unique index on ``key`` (a covering scan: no table pages read)."""
    found: dict[int, str] = {}
    try:
        for key, item_id in src.execute("SELECT key, id FROM items INDEXED BY sqlite_autoindex_items_1 "
                                        "WHERE key IS NOT NULL"):
            found[int(item_id)] = key
    except sqlite3.DatabaseError:
        pass
    return found
