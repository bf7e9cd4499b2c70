"""Encoder versions: a collection remembers the fingerprint of the encoder weights that made its vectors."""
from __future__ import annotations

from typing import Protocol

from ..config import CollectionInfo
from ..encoders import Encoder

FINGERPRINT_KEY = "encoder_fingerprint"  # in the store's meta table (the truth) and in collection.json


class MetaReader(Protocol):
    def get_meta(self, key: str) -> str | None: ...


def stored_fingerprint(info: CollectionInfo, meta: MetaReader) -> str:
    """The fingerprint the stored vectors were made with: the store's (set in the re-embed transaction), else
    collection.json's; "" for collections made before fingerprints existed."""
    value = meta.get_meta(FINGERPRINT_KEY)
    return info.encoder_fingerprint if value is None else value


def stale_message(name: str, encoder: Encoder, stored: str) -> str | None:
    """Why vectors made with fingerprint ``stored`` cannot be compared with ``encoder``'s, else None."""
    if encoder.fingerprint == stored:
        return None
    return (f"collection '{name}' was built with {encoder.id} {stored or '(unversioned)'}; this xsearch has "
            f"{encoder.id} {encoder.fingerprint or '(unversioned)'}: run `xsearch reindex --reembed -c {name}`")
