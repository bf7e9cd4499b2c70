"""A hostile folder for ingest tests and ``benchmarks/bench_reliability.py``: good files with odd names and rates,
bad files of every type, and entries that are not files at all. Everything is generated here (no data needed).

``build(folder)`` writes it and returns which names must be indexed and, for the others, a fragment of the reason
that must name them. Names are bytes (some are not valid UTF-8).
"""
from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


def png(w: int = 48, h: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small solid-colour PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(w: int = 48, h: int = 48, color: tuple[int, int, int] = (30, 30, 200)) -> bytes:
    """A small solid-colour JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declared(w: int, h: int, rows: int | None = None) -> bytes:
    """A 1-bit greyscale PNG of ``w`` x ``h`` whose data holds ``rows`` all-black rows (all of them by default):
    a decompression bomb when complete (a few hundred KB that decode to gigabytes as RGB), a lie when short."""
    raw = (b"\x00" + bytes((w + 7) // 8)) * (h if rows is None else rows)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def wav(sr: int = 16_000, seconds: float = 1.0, freq: float = 440.0, poison: float | None = None) -> bytes:
    """A float WAV tone; ``poison`` (nan/inf) written into some samples."""
    import soundfile as sf

    t = np.arange(int(sr * seconds)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if poison is not None:
        wave[len(wave) // 3 :: 97] = poison
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: max(16, len(data) // 3)]


GARBAGE = bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8))

# name -> bytes of a file that must be indexed
GOOD: dict[bytes, Callable[[], bytes]] = {
    b"red.png": lambda: png(color=(220, 20, 20)),
    b"blue.jpg": lambda: jpeg(color=(20, 20, 220)),
    b"caf\xe9.jpg": lambda: jpeg(color=(20, 200, 20)),                  # Latin-1 name: not valid UTF-8
    b"na\xefve notes.txt": lambda: "a note about a cat on a sofa".encode(),
    b"sub/deeper/green.png": lambda: png(color=(20, 220, 20)),
    b"sub/\xff\xfe folder/yellow.png": lambda: png(color=(230, 230, 20)),  # a folder whose name is not UTF-8
    b"tone16k.wav": lambda: wav(16_000),
    b"odd4001.wav": lambda: wav(4001, 1.0),                              # odd rates: bounded resampler
    b"odd8001.wav": lambda: wav(8001, 1.0),
    b"odd44101.wav": lambda: wav(44101, 1.0),
}

# name -> (bytes, fragment of the reason that must name it)
BAD: dict[bytes, tuple[Callable[[], bytes], str]] = {
    b"zero.jpg": (lambda: b"", "empty file"),
    b"zero.png": (lambda: b"", "empty file"),
    b"zero.txt": (lambda: b"", "empty text file"),
    b"zero.wav": (lambda: b"", "empty file"),
    b"zero.mp3": (lambda: b"", "empty file"),
    b"zero.flac": (lambda: b"", "empty file"),
    b"cut.jpg": (lambda: truncated(jpeg(64, 64)), "image"),
    b"cut.png": (lambda: truncated(png(64, 64)), "image"),
    b"cut.wav": (lambda: wav()[:30], "audio"),
    b"garbage.jpg": (lambda: GARBAGE, "not a readable image"),
    b"garbage.png": (lambda: GARBAGE, "not a readable image"),
    b"garbage.mp3": (lambda: GARBAGE, "unreadable audio"),
    b"garbage.wav": (lambda: GARBAGE, "unreadable audio"),
    b"garbage.txt": (lambda: b"\x00\x01" + GARBAGE, "binary data"),
    b"gar\xe7on.jpg": (lambda: GARBAGE, "not a readable image"),       # bad file with a non-UTF-8 name
    b"bomb.png": (lambda: png_declared(9000, 9000), "image too large"),  # 81 Mpixels of zeros in ~10 KB
    b"huge.png": (lambda: png_declared(100_000, 100_000, rows=1), "image"),  # declares 10 Gpixels
    b"nan.wav": (lambda: wav(poison=float("nan")), "NaN or infinite"),
    b"inf.wav": (lambda: wav(poison=float("inf")), "NaN or infinite"),
}

SPECIAL_REASONS = {
    b"pipe.wav": "FIFO",
    b"pipe.jpg": "FIFO",
    b"sock.wav": "socket",
    b"loop1.jpg": "looping symbolic link",
    b"loop2.jpg": "looping symbolic link",
    b"dangling.png": "broken or looping symbolic link",
}


@dataclass
class Hostile:
    """What :func:`build` wrote: good names (to be indexed) and bad ones with a reason fragment each."""

    root: Path
    good: list[bytes] = field(default_factory=list)
    bad: dict[bytes, str] = field(default_factory=dict)

    def path(self, name: bytes) -> str:
        """The absolute path of ``name`` as Python sees it (undecodable bytes as surrogates)."""
        return os.fsdecode(os.path.join(os.fsencode(self.root), name))


def write(root: Path, name: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def build(root: Path, permissions: bool = True) -> Hostile:
    """Write the hostile folder under ``root``. ``permissions``: add an r-- folder and a 000 folder (each with a
    good PNG inside: bad when not root, good as root, which can read anything)."""
    root.mkdir(parents=True, exist_ok=True)
    out = Hostile(root.resolve())
    for name, make in GOOD.items():
        write(root, name, make())
        out.good.append(name)
    for name, (make, reason) in BAD.items():
        write(root, name, make())
        out.bad[name] = reason
    broot = os.fsencode(root)
    os.mkfifo(os.path.join(broot, b"pipe.wav"))
    os.mkfifo(os.path.join(broot, b"pipe.jpg"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.join(broot, b"sock.wav"))
    finally:
        sock.close()
    os.symlink(b"loop2.jpg", os.path.join(broot, b"loop1.jpg"))
    os.symlink(b"loop1.jpg", os.path.join(broot, b"loop2.jpg"))
    os.symlink(b"nowhere.png", os.path.join(broot, b"dangling.png"))
    os.symlink(b"..", os.path.join(broot, b"sub", b"up"))            # a folder loop: never followed
    os.symlink(b"red.png", os.path.join(broot, b"alias.png"))         # a good link: the same file, once
    out.bad.update(SPECIAL_REASONS)
    if permissions:
        root_user = os.geteuid() == 0
        for folder, mode, reason in ((b"noexec", 0o444, "Permission denied"), (b"closed", 0o000, "cannot list")):
            write(root, folder + b"/inside.png", png(color=(90, 90, 90)))
            os.chmod(os.path.join(broot, folder), mode)
            if root_user:
                out.good.append(folder + b"/inside.png")
            else:
                out.bad[folder + (b"/inside.png" if mode else b"")] = reason
    return out


def restore_permissions(root: Path) -> None:
    """Make the r-- and 000 folders removable again."""
    for folder in (b"noexec", b"closed"):
        path = os.path.join(os.fsencode(root), folder)
        if os.path.isdir(path):
            os.chmod(path, 0o755)
