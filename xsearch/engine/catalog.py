"""Engine services that are not about one collection: the encoder registry, memory sizes, training an encoder."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..encoders import Encoder, backends, create

if TYPE_CHECKING:  # pragma: no cover
    from ..train.loop import TrainResult


def list_encoders() -> list[dict[str, str]]:
    """The encoder backends you can name: ``{name, example, description}`` each (plugins included)."""
    return [{"name": b.prefix if b.exact else f"{b.prefix}:...", "example": b.example, "description": b.description}
            for b in backends()]


def get_encoder(name: str) -> Encoder:
    """The encoder registered under ``name`` (cached per process)."""
    return create(name)


def describe_encoder(name: str) -> dict[str, Any]:
    """``{id, dim, modalities, fingerprint}`` of an encoder (its weights load lazily, on first use)."""
    enc = create(name)
    return {"id": enc.id, "dim": enc.dim, "modalities": sorted(enc.modalities), "fingerprint": enc.fingerprint}


def parse_memory(text: str | None) -> int | None:
    """``4G`` / ``512M`` / a byte count as bytes; None stays None."""
    if not text:
        return None
    from ..index import parse_memory as parse

    return parse(text)


def train_encoder(manifest: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> "TrainResult":
    """Fine-tune adapters on pairs (``xsearch train``); ``options`` are ``xsearch.train.TrainConfig`` fields."""
    from ..train.loop import TrainConfig, train

    return train(TrainConfig(manifest=str(manifest), out=str(out), **options))
