"""Image thumbnails made on demand with Pillow and cached in a size-bounded folder beside the collections
(``<home>/.xsearch-cache/thumbs/<collection>/``: never inside a collection folder). Oldest files go first."""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput

SIZES = (160, 320, 640, 1280)  # the only sizes served, so the cache cannot be filled with arbitrary variants
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


def nearest_size(size: int) -> int:
    """The smallest served size that is at least ``size`` (or the largest)."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


def render(path: str | os.PathLike[str], size: int, opener: Callable[[], Any] | None = None) -> bytes:
    """A JPEG of the image at ``path`` (or of the PIL image ``opener()`` gives, e.g. a video frame) fitting in
    size x size, EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with (opener() if opener else Image.open(path)) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGBA")
                flat = Image.new("RGB", img.size, (24, 24, 24))
                flat.paste(img, mask=img.split()[-1])
                img = flat
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=84, optimize=True)
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"{path}: cannot make a thumbnail ({type(exc).__name__})") from None


class ThumbCache:
    """Thumbnails on disk keyed by (collection, item id, size, file version); bounded to ``max_bytes`` in total."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.root, self.max_bytes = root, max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None

    def get(self, collection: str, item_id: int, version: str, path: str, size: int,
            opener: Callable[[], Any] | None = None) -> bytes:
        """The cached thumbnail, or a fresh one (stored if the cache folder is writable); see :func:`render`."""
        size = nearest_size(size)
        target = self.root / collection / f"{item_id}-{size}-{version}.jpg"
        try:
            data = target.read_bytes()
            os.utime(target)  # recently used: evicted last
            return data
        except OSError:
            pass
        data = render(path, size, opener)
        self._store(target, data)
        return data

    def _store(self, target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            return  # a read-only home: serve without caching
        with self._lock:
            self._total = (self._total if self._total is not None else self._scan_total() - len(data)) + len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _files(self) -> list[os.DirEntry]:
        out = []
        for sub in (self.root.iterdir() if self.root.is_dir() else []):
            if sub.is_dir():
                out += [e for e in os.scandir(sub) if e.name.endswith(".jpg")]
        return out

    def _scan_total(self) -> int:
        return sum(e.stat().st_size for e in self._files())

    def _evict(self) -> None:
        """Delete least recently used thumbnails until the cache is under 80 % of its bound."""
        entries = sorted(self._files(), key=lambda e: e.stat().st_mtime_ns)
        total = sum(e.stat().st_size for e in entries)
        for entry in entries:
            if total <= self.max_bytes * 0.8:
                break
            try:
                size = entry.stat().st_size
                os.unlink(entry.path)
                total -= size
            except OSError:
                continue
        self._total = total
