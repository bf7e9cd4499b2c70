"""IdSet: an allow-list of ids prepared once (sorted, deduplicated, FAISS selector cached) for many filtered searches."""
from __future__ import annotations

from typing import Callable

import numpy as np

import faiss


class IdSet:
    """An immutable set of int64 ids. Build it once and reuse it: the sort, the FAISS selector and per-index facts
    (how many of the ids an index holds, its slot mask) are computed on first use and then cached."""

    def __init__(self, ids: np.ndarray | list[int], *, sorted_unique: bool = False):
        arr = np.asarray(ids, dtype=np.int64)
        self.ids = np.ascontiguousarray(arr if sorted_unique else np.unique(arr))
        self.ids.setflags(write=False)
        self._selector: "faiss.IDSelector | None" = None
        self._facts: dict[tuple, object] = {}

    def __len__(self) -> int:
        return int(self.ids.size)

    def __contains__(self, item_id: int) -> bool:
        pos = int(np.searchsorted(self.ids, item_id))
        return pos < self.ids.size and int(self.ids[pos]) == int(item_id)

    @classmethod
    def of(cls, ids: "IdSet | np.ndarray | list[int]") -> "IdSet":
        return ids if isinstance(ids, IdSet) else cls(ids)

    def selector(self) -> "faiss.IDSelector":
        """A FAISS selector accepting exactly these ids (built once; it copies the ids, so it is self-contained)."""
        if self._selector is None:
            self._selector = faiss.IDSelectorBatch(self.ids)
        return self._selector

    def fact(self, key: tuple, compute: Callable[[], object]) -> object:
        """``compute()`` cached under ``key`` (callers key by index identity and version)."""
        if key not in self._facts:
            if len(self._facts) > 8:  # an index changed many times: forget stale versions
                self._facts.clear()
            self._facts[key] = compute()
        return self._facts[key]
