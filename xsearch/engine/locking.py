"""The writer lock of a collection: one writer at a time, readers never take it.

A ``filelock`` (``flock``) on ``<collection>/.xsearch-write.lock``: the kernel drops it when its process dies, so a
killed writer never leaves a stale lock. Who holds it (PID, start time, command) is written beside it in
``.xsearch-writer.json`` so a second writer can say whom it waits for; a record naming a process that no longer runs
is recognised as stale. Leftover ``*.tmp`` files of a killed writer are removed by the next writer (never a reader).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_bytes
from ..config import now_iso
from ..errors import BadInput, CollectionBusy

LOCK_FILE = ".xsearch-write.lock"
OWNER_FILE = ".xsearch-writer.json"
PROGRESS_EVERY_S = 10.0  # while waiting: one progress line this often
log = logging.getLogger("xsearch")

Say = Callable[[str], None]


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_of(folder: Path) -> dict | None:
    """The recorded holder of the writer lock ({pid, since, command}), or None if nothing (readable) is recorded."""
    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def busy_message(name: str, owner: dict | None) -> str:
    """One line naming who writes collection ``name``."""
    if owner is None:
        who = "another process"
    elif not pid_alive(owner["pid"]):
        who = f"a leftover process of PID {owner['pid']} (gone; its children still hold the lock)"
    else:
        who = f"PID {owner['pid']} (since {owner.get('since', '?')})"
    return f"collection '{name}' is being written by {who}"


class WriterLock:
    """Re-entrant per handle: nested writes (add -> rebuild -> save) take it once. ``wait``: False fails at once with
    CollectionBusy, True waits for ever, a number waits that many seconds; ``say`` gets the waiting messages."""

    def __init__(self, folder: Path, name: str, wait: bool | float = False, say: Say | None = None):
        self.folder, self.name, self.wait = Path(folder), name, wait
        self.say = say or log.warning
        self._lock = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self, wait: bool | float | None = None) -> None:
        """Take the lock (or CollectionBusy); the first acquisition records the owner and cleans leftover temp files."""
        if self._depth:
            self._depth += 1
            return
        from filelock import FileLock, Timeout

        if self._lock is None:
            self._lock = FileLock(str(self.folder / LOCK_FILE), thread_local=False)
        wait = self.wait if wait is None else wait
        try:
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                self._wait(wait, Timeout)
        except OSError as exc:
            raise BadInput(f"{self.folder}: cannot write the collection here ({exc.strerror or exc})") from None
        self._depth = 1
        try:
            record = {"pid": os.getpid(), "since": now_iso(), "command": " ".join(sys.argv[:4])[:200]}
            atomic_write_bytes(self.folder / OWNER_FILE, json.dumps(record).encode())
            clean_temp_files(self.folder)
        except OSError as exc:
            self.release()
            raise BadInput(f"{self.folder}: cannot write the collection here ({exc.strerror or exc})") from None

    def _wait(self, wait: bool | float, timeout_error: type[Exception]) -> None:
        message = busy_message(self.name, owner_of(self.folder))
        if wait is False or wait is None:
            raise CollectionBusy(f"{message}; use --wait to wait for it")
        limit = None if wait is True else float(wait)
        start = time.monotonic()
        self.say(f"{message}; waiting for it to finish")
        last = start
        while True:
            try:
                self._lock.acquire(timeout=1.0)
                return
            except timeout_error:
                now = time.monotonic()
                if limit is not None and now - start >= limit:
                    raise CollectionBusy(f"{message}; gave up after {now - start:.0f} s") from None
                if now - last >= PROGRESS_EVERY_S:
                    self.say(f"still waiting for collection '{self.name}' ({now - start:.0f} s)")
                    last = now

    def release(self) -> None:
        """Drop one level; the last one removes the owner record and unlocks."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        try:
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def temp_files(folder: Path) -> list[Path]:
    """Leftover temp files of atomic writes (``.<name>.<random>.tmp``) in a collection folder."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))
    except OSError:
        return []


def clean_temp_files(folder: Path) -> int:
    """Remove leftover temp files (only ever called by the lock holder); return how many went."""
    gone = 0
    for p in temp_files(folder):
        p.unlink(missing_ok=True)
        gone += 1
    return gone
