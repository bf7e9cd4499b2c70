"""File discovery, modality detection and safe decoding of images, audio and text."""
from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

import numpy as np

from .errors import BadInput
from .media_formats import DECODERS, open_any, photo_meta_of, to_rgb, upright_size
from .media_video import VIDEO_EXTS

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", *DECODERS})
TEXT_EXTS = frozenset({".txt", ".md"})
AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif"})
MODALITIES = ("image", "text", "audio", "video")
MAX_TEXT_CHARS = 20_000
DRAFT_SIZE = 512  # large JPEGs are decoded at reduced scale (Image.draft) to about this size
MAX_PIXELS = 64_000_000  # decoded pixels per image (after JPEG draft scaling): decompression bombs are refused
MAX_AUDIO_SAMPLES = 200_000_000  # decoded (mono) samples per clip: about 69 min at 48 kHz, 800 MB as float32
MAX_AUDIO_SECONDS = 3600  # longer recordings are refused (resampled to 16 kHz, an hour is 230 MB as float32)
MAX_AUDIO_CHANNELS = 64
MAX_SAMPLE_RATE = 1_000_000
T = TypeVar("T")

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
    return _modality_by_name(Path(path)) or (None if Path(path).suffix else _sniff(Path(path)))


def _modality_by_name(path: Path) -> str | None:
    ext = path.suffix.lower()
    kinds = ((IMAGE_EXTS, "image"), (TEXT_EXTS, "text"), (AUDIO_EXTS, "audio"), (VIDEO_EXTS, "video"))
    return next((m for exts, m in kinds if ext in exts), None)


def _sniff(path: Path) -> str | None:
    try:
        fd, _ = open_regular(path)
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(16)
    except (OSError, BadInput):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    for magic, modality in _MAGIC:
        if head.startswith(magic):
            return modality
    return None


OnSkip = Callable[[str, str], None]  # (path, one-line reason)

# Test-only: ``TEST_HOOK(event, path)`` runs at "open" (before a file is opened for hashing/decoding) and at
# "decoded" (after it was decoded, before it is checked for changes); tests use it to delete or rewrite files
# mid-run. ``None`` in normal runs.
TEST_HOOK: Callable[[str, str], None] | None = None

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _hook(event: str, path: str) -> None:
    if TEST_HOOK is not None:
        TEST_HOOK(event, path)


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` safe to print: bytes that are not valid UTF-8 (kept as surrogates) shown as ``\\xNN``."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _kind(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)", ...); ``None`` for a regular file."""
    return None if stat.S_ISREG(mode) else next((name for test, name in _KINDS if test(mode)), "not a regular file")


def discover(roots: Iterable[str | os.PathLike[str]], on_skip: OnSkip | None = None) -> Iterator[FileInfo]:
    """Yield supported files under ``roots`` (files or folders, recursively, hidden entries skipped), sorted.

    Each file is yielded once under its resolved path, however many roots or symlinks lead to it. Symlinks to
    folders are not followed. Entries that cannot be used (unlistable folders, broken or looping links, FIFOs,
    sockets, devices, files that vanish) go to ``on_skip(path, reason)`` and the walk goes on; non-regular files
    are never opened.
    """
    seen: set[str] = set()
    skip = on_skip or (lambda path, reason: None)
    for root in roots:
        root = Path(os.path.abspath(Path(root).expanduser()))
        if not os.path.lexists(root):
            raise BadInput(f"{shown(root)}: no such file or folder")
        for p in _walk(root, skip):
            info = _file_info(p, skip)
            if info is None or info.path in seen:
                continue
            seen.add(info.path)
            yield info


def _walk(root: Path, skip: OnSkip) -> Iterator[Path]:
    """Candidate file paths under ``root`` (``root`` itself if it is not a folder), sorted, hidden ones left out."""
    try:
        is_dir = stat.S_ISDIR(os.stat(root).st_mode)
    except OSError:
        is_dir = False
    if not is_dir:
        yield root
        return
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skip(str(root), f"{shown(root)}: cannot list folder ({_why(exc)}); skipped")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(Path(entry.path), skip)
        else:
            yield Path(entry.path)


def _file_info(p: Path, skip: OnSkip) -> FileInfo | None:
    """A ``FileInfo`` for a supported regular file; ``None`` (reported if its name says it is supported) otherwise."""
    named = _modality_by_name(p)
    try:
        st = os.stat(p)
    except OSError as exc:
        link = _is_link(p)
        if named or link:
            what = "broken or looping symbolic link" if link else "cannot read file information"
            skip(str(p), f"{shown(p)}: {what} ({_why(exc)}); skipped")
        return None
    kind = _kind(st.st_mode)
    if kind is not None:
        if named and not stat.S_ISDIR(st.st_mode):
            skip(str(p), f"{shown(p)}: {kind}, not a regular file; never opened, skipped")
        return None
    modality = named or (None if p.suffix else _sniff(p))
    if modality is None:
        return None
    try:
        resolved = str(p.resolve())
    except (OSError, RuntimeError) as exc:
        skip(str(p), f"{shown(p)}: cannot resolve path ({exc}); skipped")
        return None
    if _RESERVED.search(resolved):
        skip(resolved, f"{shown(resolved)}: name uses reserved characters U+10FF80..U+10FFFF; skipped")
        return None
    return FileInfo(resolved, modality, st.st_size, st.st_mtime_ns)


def _is_link(p: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(p).st_mode)
    except OSError:
        return False


# Names that are not valid UTF-8 reach Python as lone surrogates U+DC80..U+DCFF (PEP 383); the store keeps them as
# U+10FF80..U+10FFFF (valid UTF-8 text for SQLite), so names using those code points themselves are refused.
_RESERVED = re.compile("[\U0010ff80-\U0010ffff]")


@dataclass(frozen=True)
class FileState:
    """What was read: size, mtime (ns) and SHA-256 of exactly the bytes that were decoded."""

    size: int
    mtime_ns: int
    sha256: str


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """Open a regular file read-only without ever blocking (a FIFO swapped in is refused); ``BadInput`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BadInput(f"{shown(path)}: file vanished before it could be read; skipped") from None
    except OSError as exc:
        raise BadInput(f"{shown(path)}: cannot open ({_why(exc)})") from None
    st = os.fstat(fd)
    kind = _kind(st.st_mode)
    if kind is not None:
        os.close(fd)
        raise BadInput(f"{shown(path)}: {kind}, not a regular file; skipped")
    return fd, st


def read_consistent(path: str | os.PathLike[str], decode: Callable[[BinaryIO], T], tries: int = 3) -> tuple[T, FileState]:
    """Open ``path`` once, hash it, then ``decode`` it from the same open file; if its size or mtime changed
    meanwhile, try again. The state returned describes exactly the bytes decoded."""
    for _ in range(tries):
        _hook("open", os.fsdecode(path))
        fd, before = open_regular(path)
        with os.fdopen(fd, "rb") as fh:
            try:
                digest, n = _hash_stream(fh)
                fh.seek(0)
            except OSError as exc:
                raise BadInput(f"{shown(path)}: read error ({_why(exc)})") from None
            value = decode(fh)
            _hook("decoded", os.fsdecode(path))
            after = os.fstat(fh.fileno())
        if before.st_size == after.st_size == n and before.st_mtime_ns == after.st_mtime_ns:
            return value, FileState(after.st_size, after.st_mtime_ns, digest)
    raise BadInput(f"{shown(path)}: file kept changing while being read; skipped")


def _hash_stream(fh: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while block := fh.read(chunk):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def file_hash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of the file contents, hex (``OSError`` if it cannot be read; never blocks on a FIFO)."""
    try:
        fd, _ = open_regular(path)
    except BadInput as exc:
        raise OSError(str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        return _hash_stream(fh, chunk)[0]


def load_image(path: str | os.PathLike[str], draft: int | None = DRAFT_SIZE):
    """Decode an image to RGB; raise ``BadInput`` naming the file and the reason."""
    return open_image(path, draft)[0]


def open_image(path: str | os.PathLike[str], draft: int | None = DRAFT_SIZE, fh: BinaryIO | None = None):
    """Decode an image to upright RGB (big JPEGs at reduced scale via ``Image.draft``; HEIC/RAW via
    ``media_formats``); return it and its original (w, h) as shown.

    ``fh``: decode from this open file instead of opening ``path`` (which then names it in messages and picks the
    decoder by extension).
    """
    image, size, _ = _decode_image(path, draft, fh, meta=False)
    return image, size


def open_photo(path: str | os.PathLike[str], fh: BinaryIO | None = None, draft: int | None = DRAFT_SIZE):
    """``open_image`` plus the photo's EXIF fields (capture time, camera, GPS) read from the same open file."""
    return _decode_image(path, draft, fh, meta=True)


def _decode_image(path: str | os.PathLike[str], draft: int | None, fh: BinaryIO | None, meta: bool):
    from PIL import Image, UnidentifiedImageError

    try:
        if (os.fstat(fh.fileno()).st_size if fh is not None else os.path.getsize(path)) == 0:
            raise BadInput(f"{shown(path)}: empty file (0 bytes)")
        with open_any(path, fh) as im:
            size = upright_size(im)
            fields = photo_meta_of(im, path) if meta else None
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise BadInput(f"{shown(path)}: image too large to decode ({size[0]}x{size[1]} pixels, "
                               f"limit {MAX_PIXELS // 1_000_000} Mpixels)")
            return to_rgb(im), size, fields
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"{shown(path)}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as exc:
        raise BadInput(f"{shown(path)}: unreadable image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__


def load_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_CHARS, fh: BinaryIO | None = None) -> str:
    """Read a text file as UTF-8 (invalid bytes replaced); raise ``BadInput`` if empty or unreadable."""
    try:
        if fh is not None:
            raw = fh.read(limit * 4)
        else:
            fd, _ = open_regular(path)
            with os.fdopen(fd, "rb") as own:
                raw = own.read(limit * 4)
    except OSError as exc:
        raise BadInput(f"{shown(path)}: unreadable text file ({_why(exc)})") from None
    if b"\x00" in raw[:4096]:
        raise BadInput(f"{shown(path)}: binary data in a text file")
    text = raw.decode("utf-8", errors="replace").strip()[:limit]
    if not text:
        raise BadInput(f"{shown(path)}: empty text file")
    return text


@dataclass(frozen=True)
class Clip:
    """A decoded clip: mono float32 samples in [-1, 1], sample rate, and the duration the header declares."""

    wave: np.ndarray
    sample_rate: int
    duration: float


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode audio to a mono float32 waveform in [-1, 1] and its sample rate (soundfile)."""
    clip = decode_audio(path)
    return clip.wave, clip.sample_rate


def decode_audio(path: str | os.PathLike[str], fh: BinaryIO | None = None,
                 max_samples: int = MAX_AUDIO_SAMPLES) -> Clip:
    """Decode audio block by block to mono (bounded memory: at most ``max_samples`` samples); refuse empty, huge,
    odd-headed or non-finite (NaN/inf) audio with ``BadInput`` naming the file."""
    try:
        import soundfile as sf
    except ImportError as exc:  # pragma: no cover - soundfile is a core dependency
        raise BadInput(f"{shown(path)}: audio needs the 'soundfile' package ({exc})") from None
    if (os.fstat(fh.fileno()).st_size if fh is not None else os.path.getsize(path)) == 0:
        raise BadInput(f"{shown(path)}: empty file (0 bytes)")
    try:
        with sf.SoundFile(fh if fh is not None else os.fsencode(path)) as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            _check_audio_header(path, sr, channels, frames, max_samples)
            parts, total = [], 0
            limit = min(max_samples, int(MAX_AUDIO_SECONDS * sr))
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                total += block.shape[0]
                if total > limit:
                    raise BadInput(f"{shown(path)}: audio too long (more than {limit} samples)")
                parts.append(block.mean(axis=1, dtype=np.float32))
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise BadInput(f"{shown(path)}: unreadable audio ({_sndfile_reason(exc)})") from None
    if total == 0:
        raise BadInput(f"{shown(path)}: audio has no samples")
    wave = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if not np.isfinite(wave).all():
        raise BadInput(f"{shown(path)}: audio contains NaN or infinite samples")
    return Clip(wave, sr, (frames if frames > 0 else total) / sr)


def _sndfile_reason(exc: BaseException) -> str:
    """libsndfile's reason without its "Error opening <file>:" prefix and its "(possibly a pipe?)" guess."""
    text = re.sub(r"^Error opening .*?: ", "", _one_line(exc))
    text = re.sub(r"\s*\(?possibly a pipe\??\)?", "", text).strip(" .:")
    return text or "not a supported audio format"


def _check_audio_header(path: str | os.PathLike[str], sr: int, channels: int, frames: int, max_samples: int) -> None:
    if not 0 < sr <= MAX_SAMPLE_RATE:
        raise BadInput(f"{shown(path)}: audio has an invalid sample rate ({sr} Hz)")
    if not 0 < channels <= MAX_AUDIO_CHANNELS:
        raise BadInput(f"{shown(path)}: audio has {channels} channels (at most {MAX_AUDIO_CHANNELS})")
    if frames / sr > MAX_AUDIO_SECONDS:
        raise BadInput(f"{shown(path)}: audio too long ({frames / sr / 60:.0f} min; limit {MAX_AUDIO_SECONDS // 60} min)")
    if frames > max_samples:
        raise BadInput(f"{shown(path)}: audio too long ({frames / sr / 60:.0f} min, {frames} samples; "
                       f"limit {max_samples} samples)")


def audio_info(path: str | os.PathLike[str]) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the header; ``BadInput`` if unreadable."""
    import soundfile as sf

    try:
        info = sf.info(os.fsencode(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise BadInput(f"{shown(path)}: unreadable audio ({_sndfile_reason(exc)})") from None
    return float(info.duration), int(info.samplerate)
