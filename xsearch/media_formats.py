"""Image decoders beyond Pillow's own (HEIC/HEIF, camera RAW), upright/8-bit normalisation, and photo EXIF metadata.

``DECODERS`` maps a file extension to the optional backend that opens it; a missing backend is a one-line
``BadInput`` naming the extra to install. Every decoded image then goes through :func:`to_rgb` (EXIF orientation
applied, 16-bit and float images scaled to 8 bits).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from .errors import BadInput

RAW_PREVIEW_MIN = 320  # an embedded RAW preview smaller than this (longest side) is a thumbnail: demosaic instead
META_VERSION = 1  # bump when read_photo_meta learns new fields: stored items are re-read on the next index


@dataclass(frozen=True)
class Decoder:
    """An optional image backend: its name, the pip extra that installs it and how it opens a file."""

    name: str
    extra: str
    module: str
    open: Callable[[str], Any]


def _open_heif(path: str):
    from PIL import Image

    _heif_registered()
    return Image.open(path)


_HEIF_DONE: list[bool] = []


def _heif_registered() -> bool:
    """Register pillow-heif's opener with Pillow once; False if pillow-heif is not installed."""
    if not _HEIF_DONE:
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        _HEIF_DONE.append(True)
    return True


def _open_raw(path: str):
    """A camera RAW file: its embedded preview when it is big enough, else a half-size demosaic."""
    import rawpy
    from PIL import Image

    try:
        with rawpy.imread(path) as raw:
            preview = _raw_preview(raw)
            if preview is not None:
                return preview
            rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)
    except (rawpy.LibRawError, MemoryError) as exc:
        raise BadInput(f"{path}: unreadable RAW file ({type(exc).__name__}: {exc})") from None
    return Image.fromarray(rgb)


def _raw_preview(raw):
    import rawpy
    from PIL import Image

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(thumb.data))
    else:
        image = Image.fromarray(thumb.data)
    return image if max(image.size) >= RAW_PREVIEW_MIN else None


_HEIF = Decoder("HEIC/HEIF", "heic", "pillow_heif", _open_heif)
_RAW = Decoder("camera RAW", "raw", "rawpy", _open_raw)
DECODERS: dict[str, Decoder] = {
    **{ext: _HEIF for ext in (".heic", ".heif", ".hif")},
    **{ext: _RAW for ext in (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
                             ".orf", ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".rwl")},
}


def open_any(path: str | os.PathLike[str], fh: BinaryIO | None = None):
    """Open an image with the backend its extension needs (Pillow by default, reading ``fh`` when given); the caller
    closes it."""
    from PIL import Image

    decoder = DECODERS.get(Path(path).suffix.lower())
    if decoder is None:
        return Image.open(fh if fh is not None else path)
    try:
        __import__(decoder.module)
    except ImportError:
        raise BadInput(f"{path}: {decoder.name} needs an optional decoder: pip install 'xsearch[{decoder.extra}]'") \
            from None
    return decoder.open(str(path))


def upright_size(image) -> tuple[int, int]:
    """(width, height) as shown: swapped when the EXIF orientation turns the image by 90 degrees."""
    try:
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the stored size
        turned = False
    return (image.size[1], image.size[0]) if turned else image.size


def to_rgb(image):
    """An upright 8-bit RGB copy: EXIF orientation applied, 16-bit / 32-bit / float pixels scaled, not clipped."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(image) or image
    except (ValueError, TypeError, KeyError, SyntaxError):  # a damaged EXIF block: keep the stored orientation
        pass
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), "L")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale integer pixels of up to 16 bits (or floats in [0, 1] or [0, 255]) to 0..255."""
    values = pixels.astype(np.float32)
    top = float(np.nanmax(values)) if values.size else 0.0
    if pixels.dtype.kind == "f":
        scale = 255.0 if top <= 1.0 else 1.0
    else:
        scale = 1.0 if top <= 255 else 255.0 / 65535.0
    return np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.uint8)


# ---- EXIF metadata -----------------------------------------------------------------------------
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
DATETIME_ORIGINAL, DATETIME_DIGITIZED, LENS_MAKE, LENS_MODEL = 0x9003, 0x9004, 0xA433, 0xA434
PHOTO_FIELDS = ("taken", "camera_make", "camera_model", "lens", "lat", "lon")


def read_photo_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Capture time, camera make/model, lens and GPS position from a photo's EXIF (missing ones left out).

    Reads headers only (no pixels). Never raises: an unreadable file or EXIF block gives ``{}``.
    """
    from PIL import Image

    decoder = DECODERS.get(Path(path).suffix.lower())
    try:
        if decoder is _RAW:
            return _photo_meta(_tiff_exif(path))
        if decoder is _HEIF and not _heif_registered():
            return {}
        with Image.open(path) as im:
            return _photo_meta(im.getexif())
    except Exception:  # noqa: BLE001 - metadata is optional: any parse failure means "none"
        return {}


def photo_meta_of(image, path: str | os.PathLike[str]) -> dict[str, Any]:
    """``read_photo_meta`` from an image already opened by ``open_any`` (no second read, except a RAW's header)."""
    try:
        exif = _tiff_exif(path) if DECODERS.get(Path(path).suffix.lower()) is _RAW else image.getexif()
        return _photo_meta(exif)
    except Exception:  # noqa: BLE001 - metadata is optional: any parse failure means "none"
        return {}


def _tiff_exif(path: str | os.PathLike[str], head: int = 1 << 20):
    """The EXIF of a TIFF-based RAW (DNG, CR2, NEF, ARW, ...) from its first MiB (Pillow cannot open the pixels)."""
    from PIL import Image

    with open(path, "rb") as fh:
        data = fh.read(head)
    exif = Image.Exif()
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        exif.load(data)
    return exif


def photo_fields(path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every stored photo field of ``path`` (None where EXIF has nothing) plus the reader's ``meta_version``;
    ``meta``: what ``photo_meta_of`` already read (then the file is not opened again)."""
    found = read_photo_meta(path) if meta is None else meta
    return {**dict.fromkeys(PHOTO_FIELDS), **found, "meta_version": META_VERSION}


def _photo_meta(exif) -> dict[str, Any]:
    sub = exif.get_ifd(EXIF_IFD)
    out: dict[str, Any] = {
        "taken": _when(sub.get(DATETIME_ORIGINAL) or sub.get(DATETIME_DIGITIZED) or exif.get(DATETIME)),
        "camera_make": _text(exif.get(MAKE)),
        "camera_model": _text(exif.get(MODEL)),
        "lens": _text(sub.get(LENS_MODEL)),
    }
    gps = exif.get_ifd(GPS_IFD)
    lat, lon = _degrees(gps.get(2), gps.get(1)), _degrees(gps.get(4), gps.get(3))
    if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
        out.update(lat=lat, lon=lon)
    return {k: v for k, v in out.items() if v is not None}


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip() if value is not None else ""
    return text[:200] or None


def _when(value) -> datetime | None:
    """EXIF ``YYYY:MM:DD HH:MM:SS`` (camera local time, stored naive) as a datetime; None if absent or invalid."""
    text = _text(value)
    if not text:
        return None
    for fmt, n in (("%Y:%m:%d %H:%M:%S", 19), ("%Y-%m-%d %H:%M:%S", 19), ("%Y:%m:%d %H:%M", 16), ("%Y:%m:%d", 10)):
        try:
            return datetime.strptime(text[:n], fmt)
        except ValueError:
            continue
    return None


def _degrees(dms, ref) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals and an N/S/E/W reference as signed decimal degrees."""
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not all(np.isfinite((d, m, s))):
        return None
    value = d + m / 60 + s / 3600
    return -value if _text(ref) in ("S", "W") else value
