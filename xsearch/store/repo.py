"""The metadata store: sessions, upserts, lookups and folder diffs over ``meta.sqlite``."""
from __future__ import annotations

import os
import sqlite3
import urllib.parse
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import create_engine, delete, event, false, func, inspect, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.pool import QueuePool
from sqlalchemy.orm import Session, load_only, sessionmaker

from ..atomic import kill_point
from ..errors import BadInput, DamagedCollection, SchemaTooNew
from .migrate import migrate, missing_columns
from .models import STORE_SCHEMA_VERSION, Base, Item, Meta, Staged, Tag, utcnow

CHUNK = 900  # stay under SQLite's bound-parameter limit


@dataclass
class ItemRecord:
    """What the engine knows about an item before it is stored."""

    key: str
    path: str
    modality: str
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    sample_rate: int | None = None
    text: str | None = None
    source: str | None = None
    parent_id: int | None = None
    taken: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    meta_version: int | None = None
    t: float | None = None


@dataclass
class ItemRow(ItemRecord):
    """A stored item (a detached copy: changing it changes nothing in the database)."""

    id: int = 0
    created: datetime | None = None
    updated: datetime | None = None


_RECORD_FIELDS = [f.name for f in fields(ItemRecord)]
_ROW_FIELDS = [f.name for f in fields(ItemRow)]


def _row(item: Item) -> ItemRow:
    unloaded = inspect(item).unloaded  # columns an older database lacks (see Store._items) read as None
    return ItemRow(**{name: getattr(item, name) for name in _ROW_FIELDS if name not in unloaded})


def _chunks(values: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _read_only_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


DAMAGE_MARKS = ("malformed", "not a database", "corrupt", "disk i/o error")


def _damage(path: Path, exc: BaseException) -> DamagedCollection | None:
    """A DamagedCollection naming ``path`` if ``exc`` says the database file is damaged, else None."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and any(mark in text for mark in DAMAGE_MARKS):
        return DamagedCollection(f"{path}: damaged SQLite database ({exc}); run `xsearch verify --repair` on this "
                                 "collection")
    return None


def wal_header(path: Path) -> bool:
    """True if the database file says it is in WAL mode (file format bytes 18-19 = 2)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[18] == 2


def _uri(path: Path, read_only: bool, create: bool) -> str:
    """The SQLite URI: read-only (immutable when a WAL-mode file has no -wal/-shm, so no reader ever creates them),
    read-write without creating, or read-write-create."""
    base = "file:" + urllib.parse.quote(str(path.absolute()))
    if read_only:
        quiet = wal_header(path) and not (Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists())
        return base + ("?mode=ro&immutable=1" if quiet else "?mode=ro")
    return base + ("?mode=rwc" if create else "?mode=rw")


class Store:
    """Metadata + stored vectors of one collection in a SQLite file. Every write is one transaction.

    ``read_only=True`` opens an existing database for reading only: no table creation, no journal, WAL or shared
    memory file created, writes refused by SQLite. Without ``create`` the file must exist (DamagedCollection if
    not). Writers switch the file to WAL mode while they hold the collection's writer lock (:meth:`writing`), so
    readers keep reading during a write, and back to a plain rollback journal afterwards, so a later reader never
    needs to create anything. A damaged database raises DamagedCollection naming the file, wherever it shows up.
    A writer migrates an older schema in place (``migrate.py``); a reader never does: columns the database lacks
    read as ``None`` and filters on them match nothing.
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False, create: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if not create and not self.path.is_file():
            raise DamagedCollection(f"{self.path}: missing (the collection's metadata and stored vectors); restore it "
                                    "from a backup, or delete the collection folder and index again")
        uri = _uri(self.path, read_only, create)
        self.engine: Engine = create_engine(
            f"sqlite:///{self.path}", poolclass=QueuePool,
            creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10.0))
        event.listen(self.engine, "connect", _read_only_pragmas if read_only else _sqlite_pragmas)
        event.listen(self.engine, "handle_error", self._on_error)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.missing: frozenset[str] = frozenset()
        if not read_only:
            event.listen(self._session, "after_commit", lambda _s: kill_point("sqlite"))
        try:
            if create:
                Base.metadata.create_all(self.engine)
            self._check_schema(create)
            self.missing = frozenset(c.name for c in missing_columns(self.engine, Item.__table__))
        except DatabaseError as exc:
            raise _damage(self.path, exc.orig) or BadInput(
                f"{self.path}: not a readable SQLite database ({exc.orig})") from None

    def _on_error(self, context) -> None:
        damaged = _damage(self.path, context.original_exception)
        if damaged is not None:
            raise damaged

    def writing(self, active: bool) -> None:
        """Enter (WAL) or leave (rollback journal) writing mode; called by the holder of the writer lock."""
        self.engine.dispose()  # idle pooled connections would keep the file in WAL mode
        with self.engine.connect() as conn:
            if active:
                try:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                except OperationalError:
                    pass  # readers kept it busy: write with the rollback journal (commits then briefly block them)
                return
            conn.exec_driver_sql("PRAGMA busy_timeout=200")
            try:
                conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
            except OperationalError:
                pass  # a reader has the WAL open: the file stays in WAL mode until a later writer finishes
        self.engine.dispose()

    def _check_schema(self, create: bool) -> None:
        version = self.get_meta("schema_version")
        if version is None and create:
            self.set_meta("schema_version", str(STORE_SCHEMA_VERSION))
        elif version is None:
            return
        elif int(version) > STORE_SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path}: metadata schema {version} is newer than this xsearch ({STORE_SCHEMA_VERSION})")

    def upgrade(self) -> list[str]:
        """Migrate an older schema in place (called by the holder of the writer lock); return the columns added."""
        if self.read_only or (not self.missing and self.get_meta("schema_version") == str(STORE_SCHEMA_VERSION)):
            return []
        added = migrate(self.engine, Base.metadata, {"schema_version": str(STORE_SCHEMA_VERSION)})
        self.engine.dispose()  # pooled connections may hold the old table layout
        self.missing = frozenset()
        return added

    def _items(self):
        """``select(Item)`` loading only the columns this database has (an older schema opened read-only)."""
        if not self.missing:
            return select(Item)
        cols = [c for c in Item.__table__.columns if c.name not in self.missing and c.name != "vector"]
        return select(Item).options(load_only(*[getattr(Item, c.name) for c in cols]))

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._session()

    # ---- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict[str, str]) -> None:
        """Set several meta keys in one transaction."""
        with self.session() as s, s.begin():
            for key, value in values.items():
                s.merge(Meta(key=key, value=value))

    def metas(self) -> dict[str, str]:
        """Every meta key and value."""
        with self.session() as s:
            return {m.key: m.value for m in s.scalars(select(Meta))}

    # ---- writes -------------------------------------------------------------------------------
    def upsert(self, records: Sequence[ItemRecord], vectors: np.ndarray) -> list[int]:
        """Insert or update items by ``key`` with their vectors, in one transaction; return their ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(records) != len(vectors):
            raise BadInput(f"{len(records)} items for {len(vectors)} vectors")
        with self.session() as s, s.begin():
            existing = self._by_keys(s, [r.key for r in records])
            items = []
            for rec, vec in zip(records, vectors):
                item = existing.get(rec.key) or Item(key=rec.key)
                for name in _RECORD_FIELDS:
                    setattr(item, name, getattr(rec, name))
                item.vector = vec.tobytes()
                item.updated = utcnow()
                s.add(item)
                items.append(item)
            s.flush()
            ids = [item.id for item in items]
            for part in _chunks(ids):  # a vector staged by an unfinished re-embed is older than this one
                s.execute(delete(Staged).where(Staged.item_id.in_(part)))
            return ids

    def replace_group(self, parent: ItemRecord, children: Sequence[ItemRecord],
                      vectors: np.ndarray) -> tuple[int, list[int], list[int]]:
        """In one transaction: upsert ``parent`` (stored without a vector), drop its old children, insert
        ``children`` with ``vectors`` under it. Returns (parent id, new child ids, removed ids)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(children) != len(vectors):
            raise BadInput(f"{len(children)} items for {len(vectors)} vectors")
        with self.session() as s, s.begin():
            item = self._by_keys(s, [parent.key]).get(parent.key) or Item(key=parent.key)
            for name in _RECORD_FIELDS:
                setattr(item, name, getattr(parent, name))
            item.vector, item.updated = b"", utcnow()
            s.add(item)
            s.flush()
            removed = self._delete(s, s.scalars(select(Item.id).where(Item.parent_id == item.id)).all())
            s.execute(delete(Staged).where(Staged.item_id == item.id))
            kids = []
            for rec, vec in zip(children, vectors):
                kid = Item(**{name: getattr(rec, name) for name in _RECORD_FIELDS})
                kid.parent_id, kid.vector = item.id, vec.tobytes()
                s.add(kid)
                kids.append(kid)
            s.flush()
            return item.id, [k.id for k in kids], removed

    def touch(self, ids_mtimes: Iterable[tuple[int, int]]) -> None:
        """Record a new mtime for items whose content did not change."""
        with self.session() as s, s.begin():
            for item_id, mtime_ns in ids_mtimes:
                item = s.get(Item, item_id)
                if item is not None:
                    item.mtime_ns = mtime_ns

    def annotate(self, fields_by_id: dict[int, dict]) -> None:
        """Set metadata columns (e.g. photo EXIF fields) of stored items without touching their vectors."""
        with self.session() as s, s.begin():
            for item_id, values in fields_by_id.items():
                item = s.get(Item, int(item_id))
                if item is not None:
                    for name, value in values.items():
                        setattr(item, name, value)

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete items and their children (captions); return every id removed."""
        ids = list(ids)
        if not ids:
            return []
        with self.session() as s, s.begin():
            return self._delete(s, ids)

    @staticmethod
    def _delete(s: Session, ids: Sequence[int]) -> list[int]:
        doomed = set(ids)
        frontier = list(ids)
        while frontier:
            kids = []
            for part in _chunks(frontier):
                kids += s.scalars(select(Item.id).where(Item.parent_id.in_(part))).all()
            frontier = [k for k in kids if k not in doomed]
            doomed.update(frontier)
        for part in _chunks(sorted(doomed)):
            s.execute(delete(Tag).where(Tag.item_id.in_(part)))
            s.execute(delete(Staged).where(Staged.item_id.in_(part)))
            s.execute(delete(Item).where(Item.id.in_(part)))
        return sorted(doomed)

    def set_tags(self, tags: dict[int, list[tuple[str, float]]], source: str = "zero-shot") -> None:
        """Replace the ``source`` tags of the given items."""
        with self.session() as s, s.begin():
            for part in _chunks(list(tags)):
                s.execute(delete(Tag).where(Tag.item_id.in_(part), Tag.source == source))
            for item_id, pairs in tags.items():
                for tag, score in pairs:
                    s.add(Tag(item_id=item_id, tag=tag, score=float(score), source=source))

    # ---- re-embedding: vectors staged beside the live ones, swapped in by one transaction ----------
    def staged_ids(self, fingerprint: str) -> np.ndarray:
        """Ids already staged for ``fingerprint`` (a resumed run); rows staged for any other fingerprint are dropped."""
        with self.session() as s, s.begin():
            s.execute(delete(Staged).where(Staged.fingerprint != fingerprint))
            return np.fromiter(s.scalars(select(Staged.item_id)), dtype=np.int64)

    def stage(self, ids: Sequence[int], vectors: np.ndarray | None, fingerprint: str,
              reasons: Sequence[str] | None = None) -> None:
        """Stage new vectors for ``ids`` (or, with ``vectors=None``, the reason each could not be re-embedded)."""
        blobs = [None] * len(ids) if vectors is None else [
            v.tobytes() for v in np.ascontiguousarray(vectors, dtype=np.float32)]
        why = list(reasons) if reasons is not None else [None] * len(ids)
        with self.session() as s, s.begin():
            for item_id, blob, reason in zip(ids, blobs, why):
                s.merge(Staged(item_id=int(item_id), fingerprint=fingerprint, vector=blob, reason=reason))

    def swap_staged(self, fingerprint: str, meta: dict[str, str]) -> tuple[list[tuple[str, str]], list[int]]:
        """In one transaction: drop items staged as failed (with their captions), move every staged vector into its
        item, set ``meta`` and clear the stage. Returns ((path, reason) of the failed items, every id removed).
        BadInput (and nothing changed) if some item has no staged vector."""
        with self.session() as s, s.begin():
            missing = s.scalar(select(func.count()).select_from(Item).where(
                ~Item.id.in_(select(Staged.item_id).where(Staged.fingerprint == fingerprint))))
            if missing:
                raise BadInput(f"{self.path}: {missing} items have no re-embedded vector yet; run the re-embed again")
            failed = s.execute(select(Item.id, Item.path, Staged.reason).join(Staged, Staged.item_id == Item.id)
                               .where(Staged.vector.is_(None))).all()
            removed = self._delete(s, [f[0] for f in failed])
            new_vector = select(Staged.vector).where(Staged.item_id == Item.id).scalar_subquery()
            s.execute(update(Item).where(Item.id.in_(select(Staged.item_id))).values(vector=new_vector)
                      .execution_options(synchronize_session=False))
            s.execute(delete(Staged))
            for key, value in meta.items():
                s.merge(Meta(key=key, value=value))
            return [(path, reason or "") for _, path, reason in failed], removed

    # ---- reads --------------------------------------------------------------------------------
    def _by_keys(self, s: Session, keys: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        for part in _chunks(list(keys)):
            for item in s.scalars(self._items().where(Item.key.in_(part))):
                out[item.key] = item
        return out

    def by_keys(self, keys: Sequence[str]) -> dict[str, ItemRow]:
        with self.session() as s:
            return {k: _row(v) for k, v in self._by_keys(s, keys).items()}

    def get(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        out: dict[int, ItemRow] = {}
        with self.session() as s:
            for part in _chunks([int(i) for i in ids]):
                for item in s.scalars(self._items().where(Item.id.in_(part))):
                    out[item.id] = _row(item)
        return out

    def rows(self, *, modalities: Sequence[str] | None = None, under: Sequence[str] | None = None,
             since: datetime | None = None, until: datetime | None = None, tags: Sequence[str] | None = None,
             source: str | None = None, **photo) -> list[ItemRow]:
        """Items matching the filters (see :meth:`_filtered`), ordered by id."""
        with self.session() as s:
            stmt = self._filtered(self._items(), modalities, under, since, until, tags, source, **photo)
            rows = [_row(i) for i in s.scalars(stmt.order_by(Item.id))]
        near = photo.get("near")
        return [r for r in rows if _within(r.lat, r.lon, near)] if near else rows

    def ids_where(self, *, modalities: Sequence[str] | None = None, under: Sequence[str] | None = None,
                  since: datetime | None = None, until: datetime | None = None, tags: Sequence[str] | None = None,
                  source: str | None = None, **photo) -> np.ndarray:
        """Ids of items matching the filters (see :meth:`_filtered`)."""
        near = photo.get("near")
        with self.session() as s:
            if not near:
                stmt = self._filtered(select(Item.id), modalities, under, since, until, tags, source, **photo)
                return np.fromiter(s.scalars(stmt), dtype=np.int64)
            stmt = self._filtered(select(Item.id, Item.lat, Item.lon), modalities, under, since, until, tags,
                                  source, **photo)
            return np.array([i for i, lat, lon in s.execute(stmt) if _within(lat, lon, near)], dtype=np.int64)

    def _filtered(self, stmt, modalities: Sequence[str] | None, under: Sequence[str] | None, since: datetime | None,
                  until: datetime | None, tags: Sequence[str] | None, source: str | None, *,
                  taken_after: datetime | None = None, taken_before: datetime | None = None,
                  camera: str | None = None, near: tuple[float, float, float] | None = None):
        """``stmt`` restricted to: any of ``modalities``; paths under any prefix in ``under``; file mtime within
        [since, until]; any of ``tags``; captions from CSV ``source``; EXIF capture time within
        [taken_after, taken_before]; ``camera`` in make or model (case-insensitive); GPS within the bounding box of
        ``near`` (lat, lon, km; callers refine to the circle). None means no restriction."""
        if modalities:
            stmt = stmt.where(Item.modality.in_(list(modalities)))
        if under:
            stmt = stmt.where(or_(*[_under_clause(p) for p in under]))
        if since is not None:
            stmt = stmt.where(Item.mtime_ns >= _ns(since))
        if until is not None:
            stmt = stmt.where(Item.mtime_ns <= _ns(until))
        if tags:  # a video's tags hold for its moments too
            tagged = select(Tag.item_id).where(Tag.tag.in_(list(tags)))
            stmt = stmt.where(or_(Item.id.in_(tagged), Item.parent_id.in_(tagged)))
        if source is not None:
            stmt = stmt.where(Item.source == source)
        photo = taken_after or taken_before or camera or near
        if photo and self.missing:  # an older schema read without migrating: no item has photo metadata yet
            return stmt.where(false())
        if taken_after is not None:
            stmt = stmt.where(Item.taken >= taken_after)
        if taken_before is not None:
            stmt = stmt.where(Item.taken <= taken_before)
        if camera:
            like = "%" + camera.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(or_(func.lower(Item.camera_make).like(like, escape="\\"),
                                  func.lower(Item.camera_model).like(like, escape="\\")))
        if near:
            stmt = stmt.where(*_box(*near))
        return stmt

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        out: dict[int, list[tuple[str, float]]] = {}
        with self.session() as s:
            for part in _chunks([int(i) for i in ids]):
                for tag in s.scalars(select(Tag).where(Tag.item_id.in_(part)).order_by(Tag.score.desc())):
                    out.setdefault(tag.item_id, []).append((tag.tag, tag.score or 0.0))
        return out

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Stored vectors for ``ids``, in the same order."""
        found: dict[int, bytes] = {}
        with self.session() as s:
            for part in _chunks([int(i) for i in ids]):
                for item_id, blob in s.execute(select(Item.id, Item.vector).where(Item.id.in_(part))):
                    found[item_id] = blob
        return _decode([found[int(i)] for i in ids], dim)

    def iter_vectors(self, dim: int, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids, vectors) in id order, ``batch`` at a time."""
        last = 0
        while True:
            with self.session() as s:
                stmt = select(Item.id, Item.vector).where(Item.id > last).order_by(Item.id).limit(batch)
                got = s.execute(stmt).all()
            if not got:
                return
            last = got[-1][0]
            got = [g for g in got if g[1]]  # a video item has no vector (its moments have)
            yield np.array([g[0] for g in got], dtype=np.int64), _decode([g[1] for g in got], dim)

    def vector_dim(self) -> int:
        """Dimension of the stored vectors (0 when there are none)."""
        with self.session() as s:
            size = s.scalar(select(func.length(Item.vector)).where(func.length(Item.vector) > 0).limit(1))
            return int(size or 0) // 4

    def staged_count(self) -> int:
        """Vectors staged by an unfinished re-embed."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Staged)) or 0)

    def counts(self) -> dict[str, int]:
        """Items per modality; a video counts once (its moments, the rows with a time ``t``, are not counted)."""
        query = select(Item.modality, func.count()).group_by(Item.modality)
        if "t" not in self.missing:
            query = query.where(Item.t.is_(None))
        with self.session() as s:
            return {m: n for m, n in s.execute(query)}

    def count(self) -> int:
        """Items with a vector (what the FAISS index holds: every item but video files)."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Item).where(func.length(Item.vector) > 0)) or 0)


def _under_clause(prefix: str):
    prefix = prefix.rstrip(os.sep)
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(Item.path == prefix, Item.path.like(escaped + os.sep + "%", escape="\\"))


EARTH_KM = 6371.0088


def _box(lat: float, lon: float, km: float) -> list:
    """SQL conditions for a lat/lon box that holds every point within ``km`` of (lat, lon)."""
    dlat = np.degrees(km / EARTH_KM)
    conds = [Item.lat.is_not(None), Item.lon.is_not(None), Item.lat.between(lat - dlat, lat + dlat)]
    cos = np.cos(np.radians(lat))
    if cos > 1e-6:
        dlon = np.degrees(km / (EARTH_KM * cos))
        if lon - dlon >= -180 and lon + dlon <= 180:  # a box across the antimeridian: the circle test alone
            conds.append(Item.lon.between(lon - dlon, lon + dlon))
    return conds


def _within(lat: float | None, lon: float | None, near: tuple[float, float, float]) -> bool:
    """Great-circle (haversine) distance from (lat, lon) to ``near``'s point is at most its km."""
    if lat is None or lon is None:
        return False
    la1, lo1, la2, lo2 = map(np.radians, (lat, lon, near[0], near[1]))
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return bool(2 * EARTH_KM * np.arcsin(np.sqrt(min(1.0, h))) <= near[2])


def _ns(when: datetime) -> int:
    """A datetime (naive = local time) as nanoseconds since the epoch, to compare with file mtimes."""
    return int(when.timestamp() * 1e9)


def _decode(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()
