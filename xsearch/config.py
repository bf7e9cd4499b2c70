"""Frozen settings and the self-description of a collection folder (``collection.json``)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .errors import BadInput, MissingCollection, SchemaTooNew

SCHEMA_VERSION = 1
DEFAULT_ENCODER = "xsearch-mini"
DEFAULT_COLLECTION = "default"
INFO_FILE = "collection.json"
VECTORS_FILE = "vectors.faiss"
META_FILE = "meta.sqlite"


def default_home() -> Path:
    """Home of collections: ``$XSEARCH_HOME`` or ``./indexes``."""
    return Path(os.environ.get("XSEARCH_HOME") or "indexes")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class IndexSpec:
    """What FAISS index was built: a factory string plus search-time parameters and measured recall."""

    kind: str = "flat"
    factory: str = "Flat"
    metric: str = "ip"
    params: dict[str, Any] = field(default_factory=dict)
    recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSpec":
        known = {k: data[k] for k in ("kind", "factory", "metric", "params", "recall") if k in data}
        return cls(**known)


@dataclass(frozen=True)
class CollectionInfo:
    """Contents of ``collection.json``: what a collection folder holds and how it was built."""

    name: str
    encoder: str
    dim: int
    encoder_fingerprint: str = ""  # version of the encoder's weights ("" = unversioned, e.g. xsearch-mini before v2)
    index: IndexSpec = field(default_factory=IndexSpec)
    counts: dict[str, int] = field(default_factory=dict)
    index_request: str = "auto"
    target_recall: float = 0.95
    memory_bytes: int | None = None
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["index"] = self.index.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CollectionInfo":
        version = int(data.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"collection '{data.get('name')}' has schema version {version}; this xsearch reads "
                f"up to {SCHEMA_VERSION}: upgrade xsearch"
            )
        return cls(
            name=data["name"],
            encoder=data["encoder"],
            dim=int(data["dim"]),
            encoder_fingerprint=str(data.get("encoder_fingerprint") or ""),
            index=IndexSpec.from_dict(data.get("index", {})),
            counts=dict(data.get("counts", {})),
            index_request=data.get("index_request", "auto"),
            target_recall=float(data.get("target_recall", 0.95)),
            memory_bytes=data.get("memory_bytes"),
            schema_version=version,
            created=data.get("created", now_iso()),
            updated=data.get("updated", now_iso()),
        )

    def touched(self, **changes: Any) -> "CollectionInfo":
        """A copy with ``changes`` applied and ``updated`` set to now."""
        return replace(self, updated=now_iso(), **changes)

    def save(self, folder: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(folder / INFO_FILE, text.encode())

    @classmethod
    def load(cls, folder: Path) -> "CollectionInfo":
        path = folder / INFO_FILE
        if not path.exists():
            raise MissingCollection(f"{folder}: no collection here (missing {INFO_FILE}); run `xsearch index` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: unreadable collection description ({exc})") from None
        if not isinstance(data, dict) or not all(k in data for k in ("name", "encoder", "dim")):
            raise BadInput(f"{path}: not a collection description (expected a JSON object with name, encoder and "
                           "dim); run `xsearch verify --repair` to rewrite it from meta.sqlite")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"{path}: malformed collection description ({exc})") from None
