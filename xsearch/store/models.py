"""SQLAlchemy 2.0 models of a collection's metadata database (``meta.sqlite``)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

STORE_SCHEMA_VERSION = 2  # 2: video moment time t, photo metadata (taken, camera, lens, GPS); see store/migrate.py


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# File names that are not valid UTF-8 reach Python as lone surrogates U+DC80..U+DCFF (PEP 383, surrogateescape),
# which SQLite text cannot hold: they are stored as U+10FF80..U+10FFFF and turned back when read (discovery refuses
# names that use those code points themselves), so every path round-trips exactly.
_TO_DB = {0xDC80 + b: 0x10FF80 + b for b in range(128)}
_FROM_DB = {v: k for k, v in _TO_DB.items()}


class PathText(TypeDecorator):
    """Text holding file paths losslessly, undecodable bytes included (see ``_TO_DB``)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Optional[str], dialect) -> Optional[str]:
        return value.translate(_TO_DB) if isinstance(value, str) else value

    def process_result_value(self, value: Optional[str], dialect) -> Optional[str]:
        return value.translate(_FROM_DB) if isinstance(value, str) else value


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the database itself (schema version, encoder id, dirty flag)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Item(Base):
    """One indexed thing: a file (image, text, audio, video), a caption linked to its image, or a video moment.

    ``key`` is unique: the absolute path for files, ``<image path>#caption:<hash>`` for captions,
    ``<video path>#frame@<t>`` / ``#audio@<t>`` for a video's key frames and audio windows (children of the video
    item, which itself has no vector).
    ``id`` is also the item's FAISS id; ``vector`` keeps the embedding so the index can be rebuilt.
    Columns added by a later schema version are nullable (``store/migrate.py`` adds them to an older database).
    """

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(PathText, unique=True)
    path: Mapped[str] = mapped_column(PathText, index=True)
    modality: Mapped[str] = mapped_column(String(16), index=True)
    size: Mapped[Optional[int]]
    mtime_ns: Mapped[Optional[int]]
    sha256: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    width: Mapped[Optional[int]]
    height: Mapped[Optional[int]]
    duration: Mapped[Optional[float]]
    sample_rate: Mapped[Optional[int]]
    text: Mapped[Optional[str]] = mapped_column(Text)
    source: Mapped[Optional[str]] = mapped_column(PathText)
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    vector: Mapped[bytes] = deferred(mapped_column(LargeBinary))  # b"": not in the FAISS index (a video file)
    t: Mapped[Optional[float]]  # a video moment: seconds from the start of its video (parent_id)
    # schema 2: photo metadata from EXIF (NULL when absent); meta_version: the EXIF reader's version, NULL = not read
    taken: Mapped[Optional[datetime]] = mapped_column(index=True)
    camera_make: Mapped[Optional[str]] = mapped_column(Text)
    camera_model: Mapped[Optional[str]] = mapped_column(Text)
    lens: Mapped[Optional[str]] = mapped_column(Text)
    lat: Mapped[Optional[float]] = mapped_column(index=True)
    lon: Mapped[Optional[float]]
    meta_version: Mapped[Optional[int]]


class Tag(Base):
    """A tag on an item (zero-shot or user-given), with its score."""

    __tablename__ = "tags"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)
    score: Mapped[Optional[float]]
    source: Mapped[str] = mapped_column(String(32), default="user")

    __table_args__ = (Index("ix_tags_tag", "tag"),)


class Staged(Base):
    """A re-embedded vector waiting to be swapped in (``reindex --reembed``); ``vector`` NULL: it could not be."""

    __tablename__ = "staged"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    vector: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    reason: Mapped[Optional[str]] = mapped_column(Text)
