"""Query side of the engine: typed filters, hits, and the per-handle modality id cache that keeps plain queries O(1)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from ..errors import BadInput

MODALITIES = ("image", "text", "audio", "video")
QUERY_KINDS = ("text", "image", "audio")  # what a (fused) query is made of
SORTS = ("score", "date")
# Default --min-score per encoder id (``--min-score auto``): the score that keeps 99% of correct caption->photo
# matches on 500 flickr8k-train photos (``benchmarks/calibrate_min_score.py --keep 0.99`` prints how it was chosen
# and how it does on flickr-dev). Re-run it when an encoder's weights change.
DEFAULT_MIN_SCORE: dict[str, float] = {"xsearch-mini": 0.21}


def default_min_score(encoder_id: str) -> float | None:
    """The calibrated weak-match cutoff of an encoder (None: no calibration, no cutoff)."""
    return DEFAULT_MIN_SCORE.get(encoder_id)


def parse_near(spec: str | None, label: str = "--near") -> tuple[float, float, float] | None:
    """``"48.85,2.35,10"`` -> (lat, lon, km) for a GPS-radius filter (None when empty)."""
    if not spec:
        return None
    try:
        lat, lon, km = (float(x) for x in spec.split(","))
    except ValueError:
        raise BadInput(f"{label} '{spec}': expected LAT,LON,KM e.g. 48.85,2.35,10") from None
    return _checked_near((lat, lon, km), label)


def _checked_near(near, label: str = "near") -> tuple[float, float, float]:
    try:
        lat, lon, km = (float(x) for x in near)
    except (TypeError, ValueError):
        raise BadInput(f"{label} {near!r}: expected (lat, lon, km)") from None
    if not (abs(lat) <= 90 and abs(lon) <= 180 and km >= 0):
        raise BadInput(f"{label} {near!r}: latitude must be in [-90, 90], longitude in [-180, 180], km >= 0")
    return lat, lon, km


TIME_RANGE = (datetime(1678, 1, 1), datetime(2262, 1, 1))  # file times are int64 nanoseconds in the store


def clamp_time(when: datetime) -> datetime:
    """``when`` moved into the range that file times (int64 ns since 1970) can hold; naive or aware alike."""
    lo, hi = TIME_RANGE
    if when.tzinfo is not None:
        lo, hi = lo.replace(tzinfo=timezone.utc), hi.replace(tzinfo=timezone.utc)
    return min(max(when, lo), hi)


def parse_weights(spec: str | None, label: str = "weights") -> dict[str, float] | None:
    """``"text=0.3,image=0.7"`` -> ``{"text": 0.3, "image": 0.7}`` for a fused query (None when empty)."""
    if not spec:
        return None
    weights = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or name.strip() not in QUERY_KINDS:
            raise BadInput(f"{label} '{spec}': expected e.g. text=0.3,image=0.7")
        if not math.isfinite(weights[name.strip()]) or weights[name.strip()] < 0:
            raise BadInput(f"{label} '{spec}': weights must be finite numbers of 0 or more")
    if not any(weights.values()):
        raise BadInput(f"{label} '{spec}': all weights are 0; give at least one a positive weight")
    return weights


def _strings(values: str | os.PathLike[str] | Iterable | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, os.PathLike)):
        values = [values]
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class Filters:
    """What a search (or an item listing) may return. Every field is optional; empty means "no restriction".

    ``modalities``: ``image``/``text``/``audio``/``video`` (``any`` or empty: all; ``None``: the query's default: a
    text-only query returns images, audio and videos, other queries any modality). ``under``: path prefixes (made absolute).
    ``tags``: any of these tags. ``since``/``until``: file modification time bounds (naive = local time).
    Photos: ``taken_after``/``taken_before`` (EXIF capture time, camera local time), ``camera`` (case-insensitive
    substring of make or model), ``near`` ((lat, lon, km): within km of a GPS point). ``min_score``: drop weaker
    hits (a float, or ``"auto"``: the encoder's calibrated default). ``sort``: ``score`` or ``date`` (the top hits
    by score, then newest capture first; items without EXIF time by file time).
    """

    modalities: tuple[str, ...] | None = None
    under: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    camera: str | None = None
    near: tuple[float, float, float] | None = None
    min_score: float | str | None = None
    sort: str = "score"

    def __post_init__(self) -> None:
        if self.modalities is not None:
            mods = _strings(self.modalities)
            bad = [m for m in mods if m not in MODALITIES + ("any",)]
            if bad:
                raise BadInput(f"unknown modality '{bad[0]}' (use image, text, audio, video or any)")
            object.__setattr__(self, "modalities", () if "any" in mods else tuple(dict.fromkeys(mods)))
        object.__setattr__(self, "under", tuple(str(Path(p).expanduser().resolve()) for p in _strings(self.under)))
        object.__setattr__(self, "tags", _strings(self.tags))
        for name in ("since", "until", "taken_after", "taken_before"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                raise BadInput(f"filter {name}={value!r}: expected a datetime")
            if value is not None:
                object.__setattr__(self, name, clamp_time(value))
        object.__setattr__(self, "camera", (self.camera or "").strip() or None)
        if self.near is not None:
            object.__setattr__(self, "near", _checked_near(self.near))
        if self.sort not in SORTS:
            raise BadInput(f"sort '{self.sort}': use score or date")
        if self.min_score is not None and self.min_score != "auto":
            try:
                object.__setattr__(self, "min_score", float(self.min_score))
            except (TypeError, ValueError):
                raise BadInput(f"min_score {self.min_score!r}: expected a number or 'auto'") from None

    @classmethod
    def make(cls, filters: "Filters | None" = None, *, modality: str | Sequence[str] | None = None,
             under: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
             tags: str | Sequence[str] | None = None, since: datetime | None = None,
             until: datetime | None = None, **photo) -> "Filters":
        """``filters`` (or none) with any keyword given here put on top (``photo``: the photo fields by name)."""
        base = filters or cls()
        unknown = set(photo) - set(PHOTO_KEYS)
        if unknown:
            raise BadInput(f"unknown filter '{sorted(unknown)[0]}'")
        given = {k: v for k, v in dict(modalities=modality, under=under, tags=tags, since=since,
                                       until=until, **photo).items() if v is not None}
        return replace(base, **given) if given else base

    @property
    def narrows_rows(self) -> bool:
        """True when anything besides modality restricts the result (these need a metadata lookup)."""
        return bool(self.under or self.tags or self.since or self.until or self.taken_after or self.taken_before
                    or self.camera or self.near)

    def store_args(self, modalities: Sequence[str] | None = None) -> dict:
        """Keyword arguments for ``Store.ids_where`` / ``Store.rows``."""
        return dict(modalities=list(modalities) if modalities else None, under=list(self.under) or None,
                    tags=list(self.tags) or None, since=self.since, until=self.until, taken_after=self.taken_after,
                    taken_before=self.taken_before, camera=self.camera, near=self.near)

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities) if self.modalities is not None else None,
                "under": list(self.under), "tags": list(self.tags),
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "taken_after": self.taken_after.isoformat() if self.taken_after else None,
                "taken_before": self.taken_before.isoformat() if self.taken_before else None,
                "camera": self.camera, "near": list(self.near) if self.near else None,
                "min_score": self.min_score, "sort": self.sort}

    def cutoff(self, encoder_id: str) -> float | None:
        """The score below which hits are dropped (``auto``: the encoder's default)."""
        return default_min_score(encoder_id) if self.min_score == "auto" else self.min_score


PHOTO_KEYS = ("taken_after", "taken_before", "camera", "near", "min_score", "sort")


@dataclass(frozen=True)
class Hit:
    """One search result. ``path`` is the file (for a caption, its image; for a video moment, the video); ``text``
    the caption or text snippet; ``id`` the item id (use it with ``Collection.item`` / ``file_of`` / ``similar``);
    ``t`` the second of a video moment (None for other items)."""

    rank: int
    score: float
    path: str
    modality: str
    text: str | None
    id: int
    t: float | None = None
    taken: datetime | None = None

    def to_dict(self, with_id: bool = False) -> dict:
        """JSON form: ``{rank, score, path, modality, text}`` (the CLI contract; a video hit adds ``t``), plus
        ``id`` if asked and ``taken`` (ISO capture time) for photos that have one."""
        out = {"rank": self.rank, "score": round(self.score, 6), "path": self.path, "modality": self.modality,
               "text": self.text}
        if self.t is not None:
            out["t"] = self.t
        if with_id:
            out["id"] = self.id
        if self.taken is not None:
            out["taken"] = self.taken.isoformat()
        return out


def ranked(hits: list[Hit], rows: dict, cutoff: float | None, sort: str) -> list[Hit]:
    """Hits at or above ``cutoff``, in ``sort`` order (``date``: newest capture first, else file time), renumbered."""
    if cutoff is not None:
        hits = [h for h in hits if h.score >= cutoff]
    if sort == "date":
        hits = sorted(hits, key=lambda h: _when(rows.get(h.id)), reverse=True)
    return [replace(h, rank=i + 1) for i, h in enumerate(hits)]


def _when(row) -> datetime:
    if row is None:
        return datetime.min
    if getattr(row, "taken", None) is not None:
        return row.taken
    return datetime.fromtimestamp(row.mtime_ns / 1e9) if row.mtime_ns else datetime.min


class ModalityReader(Protocol):
    """The part of the store the modality cache reads."""

    def counts(self) -> dict[str, int]: ...

    def ids_where(self, *, modalities: Sequence[str] | None = None) -> np.ndarray: ...


@dataclass
class ModalityIds:
    """Which ids hold which modality, for one open collection handle.

    Counts are read once (one GROUP BY); the ids of a modality only when a query first needs them (a text query on a
    collection that also holds texts). Writes through the same handle keep both up to date, so a plain query runs no
    SQL that grows with the collection.
    """

    reader: ModalityReader
    _counts: dict[str, int] | None = None
    _ids: dict[str, np.ndarray] = field(default_factory=dict)
    _sets: dict[tuple[str, ...], object] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        if self._counts is None:
            self._counts = {m: n for m, n in self.reader.counts().items() if n}
        return dict(self._counts)

    def present(self) -> list[str]:
        return [m for m in MODALITIES if self.counts().get(m)]

    def ids(self, modality: str) -> np.ndarray:
        if modality not in self._ids:
            self._ids[modality] = np.sort(self.reader.ids_where(modalities=[modality]))
        return self._ids[modality]

    def idset(self, modalities: Sequence[str]):
        """An ``IdSet`` of the items of these modalities (cached until the next write)."""
        from ..index import IdSet

        key = tuple(sorted(set(modalities)))
        if key not in self._sets:
            parts = [self.ids(m) for m in key]
            ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            self._sets[key] = IdSet(ids, sorted_unique=True)
        return self._sets[key]

    def added(self, ids: Sequence[int], modalities: Sequence[str]) -> None:
        """Items written (new, or rewritten: an id may change modality)."""
        self.removed(ids)
        if self._counts is None:
            return
        ids_arr = np.asarray(ids, np.int64)
        mods = np.asarray(list(modalities))
        for m in set(modalities):
            mine = ids_arr[mods == m]
            self._counts[m] = self._counts.get(m, 0) + len(mine)
            if m in self._ids:
                self._ids[m] = np.union1d(self._ids[m], mine)
        self._sets.clear()

    def removed(self, ids: Sequence[int]) -> None:
        """Items deleted (ids not stored are ignored)."""
        if self._counts is None or not len(ids):
            return
        gone = np.asarray(ids, np.int64)
        if not self._complete():  # counts alone cannot tell which modality went
            self.reset()
            return
        for m in list(self._ids):
            keep = ~np.isin(self._ids[m], gone)
            self._counts[m] -= int((~keep).sum())
            self._ids[m] = self._ids[m][keep]
        self._sets.clear()

    def _complete(self) -> bool:
        return self._counts is not None and all(m in self._ids for m in self._counts)

    def reset(self) -> None:
        """Forget everything (after a rebuild or a re-embed); re-read on next use."""
        self._counts, self._ids, self._sets = None, {}, {}


def default_modalities(filters: Filters, text_only: bool, cache: ModalityIds) -> list[str] | None:
    """The modalities a search may return: the filter's, else images and audio for a text-only query; ``None`` = all."""
    if filters.modalities is not None:
        return list(filters.modalities) or None
    if not text_only:
        return None
    present = [m for m in cache.present() if m != "text"]
    return present or None
