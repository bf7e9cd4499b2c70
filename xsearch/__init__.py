"""xsearch: cross-modal retrieval — images, text and audio in one vector space, searched with FAISS.

>>> from xsearch import Collection                                    # doctest: +SKIP
>>> col = Collection.open("indexes", "photos", create=True)          # doctest: +SKIP
>>> col.add(["./photos"]); col.search(text="a dog on a beach", k=5)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .config import DEFAULT_ENCODER
from .errors import (BadInput, DimensionMismatch, EncoderMismatch, MissingCollection, MissingDependency, MissingItem,
                     ModelLoadError, SchemaTooNew, UnknownEncoder, XSearchError)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .encoders.base import AudioInput, Encoder, ImageInput

__version__ = "0.1.0"
_ENGINE_NAMES = ("Collection", "Hit", "Filters", "IndexReport", "ReembedReport", "list_collections")
__all__ = [
    *_ENGINE_NAMES, "get_encoder", "encode_text", "encode_images", "encode_audio", "similarity",
    "XSearchError", "BadInput", "DimensionMismatch", "EncoderMismatch", "MissingCollection", "MissingDependency",
    "MissingItem", "ModelLoadError", "SchemaTooNew", "UnknownEncoder", "__version__",
]


def __getattr__(name: str):
    """Import the engine lazily so `import xsearch` stays cheap."""
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'xsearch' has no attribute {name!r}")


def get_encoder(name: str = DEFAULT_ENCODER) -> "Encoder":
    """The encoder registered under ``name`` (e.g. ``xsearch-mini``, ``openclip:ViT-B-32/<ckpt>``, ``st:<folder>``)."""
    from .engine import get_encoder as engine_encoder

    return engine_encoder(name)


def encode_text(texts: Sequence[str], encoder: str = DEFAULT_ENCODER) -> "np.ndarray":
    """Embed texts: an (n, dim) L2-normalised float32 array."""
    return get_encoder(encoder).encode_text(list(texts))


def encode_images(images: Sequence["ImageInput"], encoder: str = DEFAULT_ENCODER) -> "np.ndarray":
    """Embed images (paths or PIL images): an (n, dim) L2-normalised float32 array."""
    return get_encoder(encoder).encode_images(list(images))


def encode_audio(clips: Sequence["AudioInput"], encoder: str = DEFAULT_ENCODER) -> "np.ndarray":
    """Embed audio (paths or (waveform, sample_rate) pairs): an (n, dim) L2-normalised float32 array."""
    return get_encoder(encoder).encode_audio(list(clips))


def similarity(rows: Sequence, cols: Sequence, encoder: str = DEFAULT_ENCODER) -> "np.ndarray":
    """Cosine similarity matrix between two lists of texts, file paths or vectors."""
    from .engine import cosine_matrix

    return cosine_matrix(get_encoder(encoder), rows, cols)
