"""Uploaded query files: size-limited, content sniffed with Pillow / soundfile (the name's extension is ignored),
decompression bombs refused, written only into a private temporary folder that is deleted after the query."""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import BadInput, XSearchError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per request body
MAX_IMAGE_PIXELS = 40_000_000  # an upload decoding to more pixels than this is refused (decompression bomb)
MAX_AUDIO_SECONDS = 600.0
IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
AUDIO_SUFFIX = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff"}


class PayloadTooLarge(BadInput):
    """An upload or request body over the server's size limit (HTTP 413)."""


def sniff_image(name: str, data: bytes) -> str:
    """The image format of ``data`` (JPEG, PNG, ...), decoded fully once; BadInput if it is not a safe image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise BadInput(f"upload '{name}': {img.width}x{img.height} pixels is over the limit "
                                   f"({MAX_IMAGE_PIXELS:,}); refused as a possible decompression bomb")
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"upload '{name}': refused as a decompression bomb") from None
    except XSearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not an image we can use"
        raise BadInput(f"upload '{name}': not a readable image ({type(exc).__name__})") from None
    if fmt not in IMAGE_SUFFIX:
        raise BadInput(f"upload '{name}': unsupported image format '{fmt or 'unknown'}'")
    return fmt


def sniff_audio(name: str, data: bytes) -> str:
    """The audio container of ``data`` (WAV, FLAC, ...) as libsndfile reads it; BadInput if it is not audio."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile's errors vary by format
        raise BadInput(f"upload '{name}': not a readable audio file") from None
    if info.format not in AUDIO_SUFFIX:
        raise BadInput(f"upload '{name}': unsupported audio format '{info.format}'")
    if not info.frames or info.duration > MAX_AUDIO_SECONDS:
        raise BadInput(f"upload '{name}': audio must be 0-{MAX_AUDIO_SECONDS:.0f} s long (got {info.duration:.1f} s)")
    return info.format


def check_size(name: str, data: bytes, limit: int = MAX_UPLOAD_BYTES) -> None:
    if len(data) > limit:
        raise PayloadTooLarge(f"upload '{name}': {len(data):,} bytes is over the limit ({limit:,})")
    if not data:
        raise BadInput(f"upload '{name}': empty file")


@contextmanager
def staged(files: dict[str, tuple[str, bytes]]) -> Iterator[dict[str, str]]:
    """Write sniffed uploads {kind: (name, bytes)} into a private temp folder; yield {kind: path}; delete after."""
    sniffers = {"image": (sniff_image, IMAGE_SUFFIX), "audio": (sniff_audio, AUDIO_SUFFIX)}
    with tempfile.TemporaryDirectory(prefix="xsearch-upload-") as tmp:
        os.chmod(tmp, 0o700)
        paths = {}
        for kind, (name, data) in files.items():
            sniff, suffixes = sniffers[kind]
            check_size(name, data)
            path = Path(tmp) / f"{kind}{suffixes[sniff(name, data)]}"
            path.write_bytes(data)
            paths[kind] = str(path)
        yield paths
