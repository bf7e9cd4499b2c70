"""Duplicate photos: exact copies (same SHA-256) and near-duplicates (resized, re-encoded, slightly cropped, burst
shots): pairs of stored image vectors within ``threshold`` cosine (FAISS range search), each pair confirmed by a
perceptual hash (DCT pHash, Hamming distance), joined into groups. Nothing is ever deleted: each group names the copy
to keep (largest resolution, then oldest capture, then shortest path).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import BadInput
from ..media import load_image

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ItemRow
    from .collection import Collection

DEFAULT_THRESHOLD = 0.80  # cosine between stored vectors: candidates (chosen on the train split of benchmarks/bench_dupes.py)
DEFAULT_MAX_HASH = 14  # pHash Hamming distance (of 64 bits) that confirms a candidate pair (same)
HASH_SIDE = 32


@dataclass
class DupeGroup:
    """Copies of one photo. ``kind``: ``exact`` (every member has the same bytes) or ``near``."""

    kind: str
    keeper: "ItemRow"
    members: list["ItemRow"]
    score: float = 1.0  # the lowest vector similarity that joined the group
    exact_sets: list[list[str]] = field(default_factory=list)  # paths with identical bytes inside a near group

    def to_dict(self) -> dict:
        return {"kind": self.kind, "keeper": self.keeper.path, "score": round(float(self.score), 4),
                "members": [_member(r) for r in self.members], "identical": self.exact_sets}


def _member(row: "ItemRow") -> dict:
    return {"path": row.path, "width": row.width, "height": row.height, "bytes": row.size,
            "taken": row.taken.isoformat() if row.taken else None, "sha256": row.sha256}


def find_dupes(col: "Collection", threshold: float = DEFAULT_THRESHOLD, max_hash: int = DEFAULT_MAX_HASH,
               under: Sequence[str] | None = None, hasher: Callable[[str], int | None] | None = None) -> list[DupeGroup]:
    """Duplicate groups among the collection's image files (optionally only ``under`` these paths), biggest first."""
    from ..index import close_pairs

    if not -1.0 <= threshold <= 1.0:
        raise BadInput(f"threshold {threshold}: expected a cosine similarity in [-1, 1]")
    if not 0 <= max_hash <= 64:
        raise BadInput(f"max hash distance {max_hash}: expected 0..64")
    rows = [r for r in col.store.rows(modalities=["image"], under=list(under) if under else None)
            if r.parent_id is None and r.source is None]
    by_id = {r.id: r for r in rows}
    ids = np.array(sorted(by_id), np.int64)
    a, b, s = close_pairs(ids, col.vectors(ids.tolist()), threshold)
    hashes: dict[int, int | None] = {}
    hasher = hasher or phash
    uf = _UnionFind()
    for i, j, score in zip(a.tolist(), b.tolist(), s.tolist()):
        ri, rj = by_id[i], by_id[j]
        same = ri.sha256 is not None and ri.sha256 == rj.sha256
        if same or _hash_close(hashes, hasher, ri, rj, max_hash):
            uf.join(i, j, score)
    for group in _sha_groups(rows):  # identical bytes always group, whatever their vectors
        for other in group[1:]:
            uf.join(group[0].id, other.id, 1.0)
    groups = [_group([by_id[i] for i in members], uf.low[root]) for root, members in uf.groups().items()]
    return sorted(groups, key=lambda g: (-len(g.members), g.keeper.path))


def _hash_close(cache: dict, hasher: Callable[[str], int | None], ri: "ItemRow", rj: "ItemRow", max_hash: int) -> bool:
    for r in (ri, rj):
        if r.id not in cache:
            cache[r.id] = hasher(r.path)
    hi, hj = cache[ri.id], cache[rj.id]
    return hi is not None and hj is not None and bin(hi ^ hj).count("1") <= max_hash


def _sha_groups(rows: Sequence["ItemRow"]) -> list[list["ItemRow"]]:
    by_sha: dict[str, list] = {}
    for r in rows:
        if r.sha256:
            by_sha.setdefault(r.sha256, []).append(r)
    return [g for g in by_sha.values() if len(g) > 1]


def _group(members: list["ItemRow"], score: float) -> DupeGroup:
    members = sorted(members, key=keeper_order)
    shas = {r.sha256 for r in members}
    exact = [[r.path for r in g] for g in _sha_groups(members)]
    kind = "exact" if len(shas) == 1 and None not in shas else "near"
    return DupeGroup(kind, members[0], members, score, exact if kind == "near" else [])


def keeper_order(row: "ItemRow") -> tuple:
    """Sort key: largest resolution first, then oldest capture (else file time), then shortest path."""
    pixels = (row.width or 0) * (row.height or 0)
    when = row.taken or (datetime.fromtimestamp(row.mtime_ns / 1e9) if row.mtime_ns else datetime.max)
    return (-pixels, when, len(row.path), row.path)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.low: dict[int, float] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: int, b: int, score: float) -> None:
        ra, rb = self.find(a), self.find(b)
        low = min(self.low.get(ra, 1.0), self.low.get(rb, 1.0), float(score))
        if ra != rb:
            self.parent[rb] = ra
        self.low[ra] = low

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return {root: sorted(m) for root, m in out.items() if len(m) > 1}


# ---- perceptual hash ---------------------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix(HASH_SIDE)


def phash_image(image) -> int:
    """64-bit DCT perceptual hash of a PIL image: low 8x8 frequencies (DC left out) above their median."""
    from PIL import Image

    gray = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), np.float64)
    low = (_DCT @ gray @ _DCT.T)[:8, :8].ravel()[1:]
    bits = np.concatenate([[0], low > np.median(low)])
    return int("".join("1" if x else "0" for x in bits), 2)


def phash(path: str) -> int | None:
    """:func:`phash_image` of a file (None if it cannot be decoded any more)."""
    try:
        return phash_image(load_image(path, draft=128))
    except (BadInput, OSError):
        return None
