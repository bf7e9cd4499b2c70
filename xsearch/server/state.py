"""The collections a server process holds: read-only handles, one encoder per encoder id, reopened when a concurrent
``xsearch index`` rewrites the collection (the old handle keeps serving until the new one is open)."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import INFO_FILE
from ..engine import Collection, list_collections, serve_shards_on_ray
from ..engine.collection import disk_signature
from ..errors import MissingCollection

RETIRE_AFTER_S = 60.0  # a replaced handle is closed this long after the swap (queries still running on it finish)
CHECK_EVERY_S = 0.25  # how often a handle stats its files to notice a rewrite
SETTLE_S = 0.5  # a changed collection is reopened once its files stayed unchanged this long (the writer is done)


@dataclass
class Handle:
    """One open read-only collection and what the server derived from it (folders, tags), cached per handle."""

    name: str  # the folder name it is served under (collection.json may say otherwise for a copied folder)
    col: Collection
    signature: tuple
    opened: float = field(default_factory=time.monotonic)
    _facets: dict[str, Any] | None = None

    def facets(self) -> dict[str, Any]:
        """Folders (with counts), tags (with counts), modality counts and the mtime range of the items."""
        if self._facets is None:
            rows = self.col.items()
            folders = Counter(str(Path(r.path).parent) for r in rows if r.parent_id is None)  # files, not captions/moments
            tags = Counter(t for pairs in self.col.tags_of([r.id for r in rows]).values() for t, _ in pairs)
            mtimes = [r.mtime_ns for r in rows if r.mtime_ns]
            self._facets = {
                "folders": [{"path": p, "count": n} for p, n in sorted(folders.items())][:500],
                "tags": [{"tag": t, "count": n} for t, n in tags.most_common(200)],
                "counts": self.col.stats()["counts"],
                "mtime": {"min": min(mtimes) // 10**9 if mtimes else None,
                          "max": max(mtimes) // 10**9 if mtimes else None},
            }
        return self._facets


class Library:
    """Read-only handles on the collections of one home folder, keyed by name; thread-safe."""

    def __init__(self, home: str | os.PathLike[str], names: list[str] | None = None, ray: str | None = None):
        self.home, self.ray = Path(home), ray
        self.allowed = list(names) if names else None
        self._handles: dict[str, Handle] = {}
        self._encoders: dict[str, Any] = {}
        self._retired: list[tuple[float, Collection]] = []
        self._checked: dict[str, float] = {}
        self._pending: dict[str, tuple[tuple, float]] = {}
        self._lock = threading.Lock()
        self.ready = False

    def names(self) -> list[str]:
        """Collections this server offers: the ones named at start, else every collection in the home folder."""
        return list(self.allowed) if self.allowed else list_collections(self.home)

    def default(self) -> str:
        names = self.names()
        if not names:
            raise MissingCollection(f"no collection in {self.home} (run `xsearch index PATH` first)")
        return "default" if "default" in names else names[0]

    def get(self, name: str | None = None) -> Handle:
        """The current handle of ``name`` (default: the first offered), reopened if the files changed."""
        name = name or self.default()
        if name not in self.names():
            raise MissingCollection(f"no collection '{name}' served here (have: {', '.join(self.names()) or 'none'})")
        handle = self._handles.get(name)
        now = time.monotonic()
        if handle is not None and now - self._checked.get(name, 0.0) < CHECK_EVERY_S:
            return handle
        self._checked[name] = now
        sig = disk_signature(self.home / name)
        if handle is not None and handle.signature == sig:
            return handle
        if handle is not None and not self._settled(name, sig, now):
            return handle  # a writer is still saving: keep answering from the consistent handle we have
        if not self._lock.acquire(blocking=handle is None):
            return handle  # another request is reopening it; do not queue behind it
        try:
            handle = self._handles.get(name)
            if handle is None or handle.signature != sig:
                handle = self._reopen(name, handle, sig)
        finally:
            self._lock.release()
        return handle

    def _settled(self, name: str, sig: tuple, now: float) -> bool:
        """True once the collection's files have kept the same new signature for SETTLE_S."""
        seen = self._pending.get(name)
        if seen is None or seen[0] != sig:
            self._pending[name] = (sig, now)
            return False
        return now - seen[1] >= SETTLE_S

    def _reopen(self, name: str, old: Handle | None, sig: tuple) -> Handle:
        """Open a fresh handle; if that fails while a writer is busy, keep serving the old one."""
        try:
            col = Collection.open(self.home, name, encoder=self._encoder_for(name), read_only=True)
        except Exception:  # noqa: BLE001 - e.g. a half-written file: keep the consistent handle, retry next check
            if old is None:
                raise
            return old
        if self.ray:
            serve_shards_on_ray(col, self.ray)
        if col.info.encoder not in self._encoders:
            self._encoders[col.info.encoder] = col.encoder  # load once per process
        handle = Handle(name, col, sig)
        self._handles[name] = handle
        if old is not None:
            self._retired.append((time.monotonic(), old.col))
        self._close_retired()
        return handle

    def _encoder_for(self, name: str) -> Any:
        """The already-loaded encoder for this collection's encoder id, if any (so a reopen does not reload it)."""
        try:
            enc_id = json.loads((self.home / name / INFO_FILE).read_text(encoding="utf-8"))["encoder"]
        except (OSError, ValueError, KeyError):
            return None
        return self._encoders.get(enc_id)

    def _close_retired(self) -> None:
        now = time.monotonic()
        keep = []
        for when, col in self._retired:
            if now - when > RETIRE_AFTER_S:
                col.close()
            else:
                keep.append((when, col))
        self._retired = keep

    def warm(self) -> None:
        """Open every offered collection and load its encoder (one text query), then mark the server ready."""
        for name in self.names():
            handle = self.get(name)
            handle.col.search(text="warm-up", k=1)
        self.ready = True

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                handle.col.close()
            for _, col in self._retired:
                col.close()
            self._handles, self._retired = {}, []


def check_names(home: Path, names: list[str] | None) -> None:
    """MissingCollection naming what is missing when a requested collection does not exist (checked at start)."""
    have = set(list_collections(home))
    missing = [n for n in names or [] if n not in have]
    if missing:
        raise MissingCollection(f"no collection '{missing[0]}' in {home} (have: {', '.join(sorted(have)) or 'none'})")
