"""File discovery, modality detection and safe decoding of images, audio and text."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import BadInput
from .media_formats import DECODERS, open_any, to_rgb, upright_size
from .media_video import VIDEO_EXTS

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", *DECODERS})
TEXT_EXTS = frozenset({".txt", ".md"})
AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif"})
MODALITIES = ("image", "text", "audio", "video")
MAX_TEXT_CHARS = 20_000
DRAFT_SIZE = 512  # large JPEGs are decoded at reduced scale (Image.draft) to about this size

_MAGIC = (
    (b"\xff\xd8\xff", "image"),
    (b"\x89PNG\r\n\x1a\n", "image"),
    (b"GIF87a", "image"),
    (b"GIF89a", "image"),
    (b"BM", "image"),
    (b"II*\x00", "image"),
    (b"MM\x00*", "image"),
    (b"fLaC", "audio"),
    (b"OggS", "audio"),
    (b"ID3", "audio"),
)


@dataclass(frozen=True)
class FileInfo:
    """A discovered file: absolute path, modality, size and mtime (ns)."""

    path: str
    modality: str
    size: int
    mtime_ns: int


def modality_of(path: str | os.PathLike[str]) -> str | None:
    """``image`` / ``text`` / ``audio`` from the extension, else from magic bytes; ``None`` if unsupported."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in TEXT_EXTS:
        return "text"
    if ext in AUDIO_EXTS:
        return "audio"
    if ext in VIDEO_EXTS:
        return "video"
    return _sniff(Path(path)) if not ext else None


def _sniff(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    for magic, modality in _MAGIC:
        if head.startswith(magic):
            return modality
    return None


def discover(roots: Iterable[str | os.PathLike[str]]) -> Iterator[FileInfo]:
    """Yield supported files under ``roots`` (files or folders, recursively, hidden entries skipped), sorted.

    Each file is yielded once under its resolved path, however many roots or symlinks lead to it.
    """
    seen: set[str] = set()
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            raise BadInput(f"{root}: no such file or folder")
        if root.is_file():
            paths: Iterable[Path] = [root]
        else:
            paths = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
        for p in paths:
            modality = modality_of(p)
            if modality is None:
                continue
            resolved = str(p.resolve())
            if resolved in seen:
                continue
            seen.add(resolved)
            st = p.stat()
            yield FileInfo(resolved, modality, st.st_size, st.st_mtime_ns)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def file_hash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of the file contents, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_image(path: str | os.PathLike[str], draft: int | None = DRAFT_SIZE):
    """Decode an image to RGB; raise ``BadInput`` naming the file and the reason."""
    return open_image(path, draft)[0]


def open_image(path: str | os.PathLike[str], draft: int | None = DRAFT_SIZE):
    """Decode an image to upright RGB (big JPEGs at reduced scale via ``Image.draft``; HEIC/RAW via
    ``media_formats``); return it and its original (w, h)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            raise BadInput(f"{path}: empty file (0 bytes)")
        with open_any(path) as im:
            size = upright_size(im)
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            return to_rgb(im), size
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadInput(f"{path}: unreadable image ({exc})") from None


def load_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_CHARS) -> str:
    """Read a text file as UTF-8 (invalid bytes replaced); raise ``BadInput`` if empty or unreadable."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit * 4)
    except OSError as exc:
        raise BadInput(f"{path}: unreadable text file ({exc.strerror})") from None
    if b"\x00" in raw[:4096]:
        raise BadInput(f"{path}: binary data in a text file")
    text = raw.decode("utf-8", errors="replace").strip()[:limit]
    if not text:
        raise BadInput(f"{path}: empty text file")
    return text


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode audio to a mono float32 waveform in [-1, 1] and its sample rate (soundfile)."""
    try:
        import soundfile as sf
    except ImportError as exc:  # pragma: no cover - soundfile is a core dependency
        raise BadInput(f"{path}: audio needs the 'soundfile' package ({exc})") from None
    if os.path.getsize(path) == 0:
        raise BadInput(f"{path}: empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise BadInput(f"{path}: unreadable audio ({str(exc).splitlines()[0]})") from None
    if data.shape[0] == 0:
        raise BadInput(f"{path}: audio has no samples")
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(sr)


def audio_info(path: str | os.PathLike[str]) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the header; ``BadInput`` if unreadable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise BadInput(f"{path}: unreadable audio ({str(exc).splitlines()[0]})") from None
    return float(info.duration), int(info.samplerate)
