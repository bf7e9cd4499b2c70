"""Atomic file replacement: write to a temp file in the same folder, fsync, rename. Also the test hook that kills
the process at a numbered commit point (``XSEARCH_TEST_KILL_AT``), and file checksums."""
from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

KILL_ENV = "XSEARCH_TEST_KILL_AT"  # "<point>:<n>": os._exit(137) at the n-th commit point named <point> ("any": all)
TRACE_ENV = "XSEARCH_TEST_TRACE"  # a file: every commit point reached is appended to it, one name per line
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """A commit point (a file replaced, a SQLite transaction committed): the fault-injection tests stop here."""
    trace, spec = os.environ.get(TRACE_ENV), os.environ.get(KILL_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    for key in {name, "any"}:
        _reached[key] = _reached.get(key, 0) + 1
    if want in (name, "any") and _reached[want] == int(nth or 1):
        os._exit(137)


def file_crc(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """CRC-32 of a file's bytes (8 hex digits), read in chunks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
        kill_point("file")
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(target: str | os.PathLike[str], writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        writer(str(tmp))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
