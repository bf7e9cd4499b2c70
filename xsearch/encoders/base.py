"""The Encoder interface: every backend maps text / images / audio into one L2-normalised float32 space."""
from __future__ import annotations

from abc import ABC
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ..errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

ImageInput = Union["Image.Image", str, Path]
AudioClip = tuple[np.ndarray, int]  # mono float32 waveform in [-1, 1], sample rate
AudioInput = Union[AudioClip, str, Path]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def pick_device(prefer: str | None = None) -> str:
    """``prefer`` if given, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    if prefer:
        return prefer
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder(ABC):
    """Maps inputs of one or more modalities into a shared ``dim``-dimensional space.

    Subclasses set ``id`` (the registry name that recreates them), ``dim`` and ``modalities`` (and ``fingerprint``
    when the same ``id`` can ship different weights: vectors of two fingerprints are not comparable)
    and implement the ``encode_*`` / ``preprocess_*`` methods for the modalities they support.
    Every ``encode_*`` returns an ``(n, dim)`` float32 array with L2-normalised rows.
    """

    id: str
    dim: int
    modalities: frozenset[str] = frozenset()
    fingerprint: str = ""  # version of the weights behind ``id``; collections built with another one must re-embed

    # ---- text -------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self._require("text")
        raise NotImplementedError

    # ---- images -----------------------------------------------------------------------------
    def preprocess_image(self, image: "Image.Image") -> "torch.Tensor":
        """Turn one decoded RGB image into the model's input tensor (runs in decode workers)."""
        self._require("image")
        raise NotImplementedError

    def encode_image_batch(self, batch: "torch.Tensor") -> np.ndarray:
        """Embed a stacked batch of ``preprocess_image`` outputs."""
        self._require("image")
        raise NotImplementedError

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Embed images given as PIL images or file paths."""
        import torch

        from ..media import load_image

        self._require("image")
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pils = [im if not isinstance(im, (str, Path)) else load_image(im) for im in chunk]
            batch = torch.stack([self.preprocess_image(im.convert("RGB")) for im in pils])
            out.append(self.encode_image_batch(batch))
        return l2_normalize(np.concatenate(out))

    # ---- audio ------------------------------------------------------------------------------
    def encode_audio(self, clips: Sequence[AudioInput], batch_size: int = 16) -> np.ndarray:
        """Embed audio clips given as ``(waveform, sample_rate)`` or file paths."""
        self._require("audio")
        raise NotImplementedError

    # ---- helpers ----------------------------------------------------------------------------
    def supports(self, modality: str) -> bool:
        return modality in self.modalities

    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise BadInput(f"encoder '{self.id}' cannot embed {modality} (it handles: {', '.join(sorted(self.modalities))})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, modalities={sorted(self.modalities)})"
