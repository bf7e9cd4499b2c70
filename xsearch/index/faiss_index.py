"""VectorIndex: FAISS inner-product search over L2-normalised vectors, keyed by int64 ids (SQLite row ids).

Three layouts, chosen from the FAISS index itself (so a loaded file needs no side information):

- ``idmap``: ``IndexIDMap2`` over a flat-codes index (Flat, SQfp16, SQ8, PQ): exact scan; removes compact in place.
- ``ivf``:  an IVF index (optionally behind an OPQ/PCA ``IndexPreTransform``) that stores the ids itself, with a
  hashtable direct map so ``remove`` and ``reconstruct`` work by id.
- ``tomb``: ``IndexIDMap2`` over an index that cannot remove (HNSW): ``remove`` overwrites the id slot with -1 (a
  tombstone, saved in the same .faiss file); searches skip tombstones with an ``IDSelectorBitmap``;
  ``compact()`` rebuilds the graph from the live vectors (also done automatically once half the slots are dead).

Filtered search (``allowed``) always returns ``min(k, #allowed ids present)`` hits: exact layouts filter with a
selector; IVF scales nprobe by 1/selectivity and re-runs short rows with every list probed; HNSW answers small
allowed sets (and any short rows) by exact scoring of the allowed vectors.
Unfiltered IVF searches also re-probe (8x more lists, up to all) any row that came back with fewer than k hits.
"""
from __future__ import annotations

import itertools
import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_with
from ..config import IndexSpec
from ..errors import BadInput, DimensionMismatch, MissingDependency
from . import gpu as _gpu
from .exact import exact_search
from .idset import IdSet

try:
    import faiss
except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
    raise MissingDependency("xsearch needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc

gpu_count = _gpu.gpu_count
BRUTE_MAX = 4096  # HNSW: allowed sets up to this size are scored exactly
BRUTE_FRACTION = 0.1  # ... and so are allowed sets under this share of the index
COMPACT_FRACTION = 0.5  # HNSW: rebuild once this share of slots are tombstones
_TOKENS = itertools.count(1)


def layout_of(index: "faiss.Index") -> str:
    """'idmap', 'ivf' or 'tomb' (see the module docstring); BadInput for layouts VectorIndex does not manage."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        return "idmap" if isinstance(inner, faiss.IndexFlatCodes) else "tomb"
    try:
        faiss.extract_index_ivf(index)
        return "ivf"
    except RuntimeError:
        raise BadInput(f"unsupported FAISS index layout {type(index).__name__}: expected IDMap2 or IVF") from None


def _factory_index(dim: int, factory: str, metric: str) -> "faiss.Index":
    if metric != "ip":
        raise BadInput(f"index metric '{metric}' is not supported: xsearch scores by inner product ('ip')")
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BadInput(f"bad FAISS factory string '{factory}' ({str(exc).splitlines()[0][:120]})") from None
    try:
        ivf = faiss.extract_index_ivf(base)
    except RuntimeError:
        _no_polysemous(base)
        return faiss.IndexIDMap2(base)
    _no_polysemous(ivf)
    _light_opq(base)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return base


def _no_polysemous(index: "faiss.Index") -> None:
    """Skip polysemous training of PQ codes (slow, and xsearch never searches with Hamming thresholds)."""
    index = faiss.downcast_index(index)
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def _light_opq(index: "faiss.Index") -> None:
    """Cap OPQ training (FAISS' defaults iterate 50 times over 65k points; 10 over 32k is nearly as good)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter, vt.max_train_points = 10, 32768


class VectorIndex:
    """A FAISS index of ``dim``-d vectors with explicit int64 ids; adding an existing id replaces it."""

    def __init__(self, dim: int, spec: IndexSpec | None = None, index: "faiss.Index | None" = None):
        self.dim = int(dim)
        self.spec = spec or IndexSpec()
        self.index = index if index is not None else _factory_index(self.dim, self.spec.factory, self.spec.metric)
        if self.index.d != self.dim:
            raise DimensionMismatch(f"index has dimension {self.index.d}, expected {self.dim}")
        self.layout = layout_of(self.index)
        self.read_only = False
        self._ivf = faiss.extract_index_ivf(self.index) if self.layout == "ivf" else None
        self._hnsw = self._find_hnsw()
        self._id_cache: np.ndarray | None = None
        self._sorted_cache: np.ndarray | None = None
        self._dead: int | None = None  # tombstone count, cached with the slots
        self.token = next(_TOKENS)  # unique per instance (unlike id()); with ``version`` keys facts cached on IdSets
        self.version = 0  # bumped on every change
        self._gpu_index = None
        self._gpu_wanted = False
        self.apply_params(self.spec.params)

    # ----- parameters -------------------------------------------------------------------------------------------
    def _find_hnsw(self):
        if self.layout != "tomb":
            return None
        try:  # IDMap2 over IVF (older files): exact fallbacks need reconstruct by slot
            inner_ivf = faiss.extract_index_ivf(self.index.index)
            if inner_ivf.direct_map.type == faiss.DirectMap.NoMap:
                inner_ivf.make_direct_map()
        except RuntimeError:
            pass
        inner = faiss.downcast_index(self.index.index)
        return inner.hnsw if hasattr(inner, "hnsw") else None

    def apply_params(self, params: dict) -> None:
        """Set search-time parameters (nprobe, efSearch) on the FAISS objects; also used by every search."""
        if self._ivf is not None and params.get("nprobe"):
            self._ivf.nprobe = int(params["nprobe"])
        if self._hnsw is not None and params.get("efSearch"):
            self._hnsw.efSearch = int(params["efSearch"])
        self._gpu_index = None

    @property
    def nprobe(self) -> int:
        return int(self._ivf.nprobe) if self._ivf is not None else 0

    @property
    def ef_search(self) -> int:
        return int(self._hnsw.efSearch) if self._hnsw is not None else 0

    # ----- ids --------------------------------------------------------------------------------------------------
    def _slots(self) -> np.ndarray:
        """IDMap2 layouts: the id of every internal slot (-1 = tombstone). Cached until the next change."""
        if self._id_cache is None:
            self._id_cache = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self._id_cache

    def _ivf_ids(self) -> np.ndarray:
        if self._id_cache is None:
            lists = self._ivf.invlists
            parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                     for i in range(lists.nlist) if lists.list_size(i)]
            self._id_cache = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._id_cache

    def _count_present(self, allowed: IdSet) -> int:
        """How many of the ``allowed`` ids are stored (IVF layout; cached on the IdSet until the index changes)."""
        return int(allowed.fact(("present", self.token, self.version), lambda: self._count_sorted(allowed.ids)))

    def _count_sorted(self, allowed: np.ndarray) -> int:
        if self._sorted_cache is None:
            self._sorted_cache = np.sort(self._ivf_ids())
        ids = self._sorted_cache
        pos = np.clip(np.searchsorted(ids, allowed), 0, max(0, len(ids) - 1))
        return int((ids[pos] == allowed).sum()) if len(ids) else 0

    def ids(self) -> np.ndarray:
        """All stored (live) ids."""
        if self.layout == "ivf":
            return self._ivf_ids().copy()
        slots = self._slots()
        return slots[slots >= 0] if self.layout == "tomb" else slots.copy()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - self.tombstones

    @property
    def tombstones(self) -> int:
        """Dead slots awaiting ``compact()`` (HNSW layout only)."""
        if self.layout != "tomb" or not self.index.ntotal:
            return 0
        if self._dead is None:
            self._dead = int((self._slots() < 0).sum())
        return self._dead

    def _changed(self) -> None:
        self._id_cache = self._sorted_cache = self._dead = None
        self._gpu_index = None
        self.version += 1

    # ----- mutation ---------------------------------------------------------------------------------------------
    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(f"vectors have shape {vectors.shape}; this index holds {self.dim}-d vectors")
        return vectors

    def _writable(self) -> None:
        if self.read_only:
            raise BadInput("this index was loaded memory-mapped (read-only): load it with mmap=False to change it")

    def train(self, vectors: np.ndarray) -> None:
        """Train an untrained index (IVF / PQ / SQ) on ``vectors``."""
        vectors = self._check(vectors)
        if self.index.is_trained:
            return
        try:
            self.index.train(vectors)
        except RuntimeError as exc:
            raise BadInput(f"index '{self.spec.factory}' cannot be trained on {len(vectors)} vectors "
                           f"({str(exc).splitlines()[0][:100]}); use more vectors or a flat index") from None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``, replacing any with the same id (trains an untrained index on them first)."""
        self._writable()
        vectors = self._check(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise BadInput(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):
            raise BadInput("duplicate ids in one add() call")
        if (ids < 0).any():
            raise BadInput("ids must be >= 0")
        self.remove(ids)
        self.train(vectors)
        self.index.add_with_ids(vectors, ids)
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (missing ones are ignored); return how many were removed."""
        self._writable()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or self.ntotal == 0:
            return 0
        if self.layout == "idmap":
            removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        elif self.layout == "ivf":
            present = np.intersect1d(ids, self._ivf_ids())
            removed = int(self.index.remove_ids(faiss.IDSelectorArray(present))) if len(present) else 0
        else:
            removed = self._tombstone(ids)
        if removed:
            self._changed()
        return removed

    def _tombstone(self, ids: np.ndarray) -> int:
        slots = self._slots().copy()
        dead = np.isin(slots, ids) & (slots >= 0)
        if not dead.any():
            return 0
        slots[dead] = -1
        faiss.copy_array_to_vector(slots, self.index.id_map)
        self.index.construct_rev_map()
        self._changed()
        if (slots < 0).mean() >= COMPACT_FRACTION:
            self.compact()
        return int(dead.sum())

    def compact(self) -> int:
        """HNSW layout: rebuild the graph from live vectors, dropping tombstones; return how many were dropped."""
        self._writable()
        if self.layout != "tomb" or self.tombstones == 0:
            return 0
        slots = self._slots()
        live = np.nonzero(slots >= 0)[0]
        vectors = self._slot_vectors(live)
        inner = faiss.clone_index(self.index.index)
        inner.reset()
        fresh = faiss.IndexIDMap2(inner)
        if len(live):
            fresh.add_with_ids(vectors, slots[live])
        dropped = len(slots) - len(live)
        self.index = fresh
        self._hnsw = self._find_hnsw()
        self._changed()
        self.apply_params(self.spec.params)
        return dropped

    # ----- search -----------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int,
               allowed: "IdSet | np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ids are -1 where fewer than ``k`` exist. ``allowed`` restricts to those ids
        (pass an :class:`IdSet` to reuse its sort and FAISS selector across searches)."""
        queries = self._check(np.atleast_2d(queries))
        live = self.ntotal
        k = max(1, min(int(k), live)) if live else 1
        if live == 0:
            return _empty(len(queries), k)
        if allowed is not None:
            allowed = IdSet.of(allowed)
            if len(allowed) == 0:
                return _empty(len(queries), k)
        if self.layout == "idmap":
            scores, ids = self._search_idmap(queries, k, allowed)
        elif self.layout == "ivf":
            scores, ids = self._search_ivf(queries, k, allowed)
        else:
            scores, ids = self._search_tomb(queries, k, allowed)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids

    def _search_idmap(self, queries, k, allowed):
        if allowed is None:
            gpu = self._gpu_for(k)
            if gpu is not None:
                scores, slots = gpu.search(queries, k)
                return scores, np.where(slots >= 0, self._slots()[np.clip(slots, 0, None)], -1)
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=faiss.SearchParameters(sel=allowed.selector()))

    def _search_ivf(self, queries, k, allowed):
        nprobe, nlist = max(1, self.nprobe), int(self._ivf.nlist)
        sel, present = None, self.ntotal
        if allowed is None:
            gpu = self._gpu_for(k)
            if gpu is not None:
                return gpu.search(queries, k)
        else:
            present = self._count_present(allowed)
            if present == 0:
                return _empty(len(queries), k)
            sel = allowed.selector()
            # keep the expected number of allowed candidates scanned as in an unfiltered search
            nprobe = min(nlist, math.ceil(nprobe * self.ntotal / present))
        scores, ids = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe, sel=sel))
        while nprobe < nlist:  # rows short of k hits: probe more lists (all lists = exhaustive)
            short = (ids >= 0).sum(axis=1) < min(k, present)
            if not short.any():
                break
            nprobe = nlist if nprobe * 8 >= nlist else nprobe * 8
            more = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
            scores[short], ids[short] = self.index.search(queries[short], k, params=more)
        return scores, ids

    def _search_tomb(self, queries, k, allowed):
        slots = self._slots()
        mask, live, bitmap = self._tomb_mask(allowed)
        if len(live) == 0:
            return _empty(len(queries), k)
        if allowed is not None and (len(live) <= BRUTE_MAX or len(live) < BRUTE_FRACTION * len(slots)):
            return self._exact(queries, k, live)
        boost = len(slots) / len(live)
        sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)) if len(live) < len(slots) else None
        try:
            scores, found = self.index.index.search(queries, k, params=self._inner_params(k, boost, sel))
        except RuntimeError:  # an inner index type without selector support: score the live vectors exactly
            return self._exact(queries, k, live)
        ids = np.where(found >= 0, slots[np.clip(found, 0, None)], -1)
        short = (ids >= 0).sum(axis=1) < min(k, len(live))
        if short.any():
            scores[short], ids[short] = self._exact(queries[short], k, live)
        return scores, ids

    def _tomb_mask(self, allowed: IdSet | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slot mask, live slots, packed bitmap) of the allowed live slots; cached on the IdSet per index version."""
        def compute():
            slots = self._slots()
            mask = slots >= 0 if allowed is None else np.isin(slots, allowed.ids)
            return mask, np.nonzero(mask)[0], np.packbits(mask, bitorder="little")

        if allowed is None:
            return compute()
        return allowed.fact(("tomb", self.token, self.version), compute)  # type: ignore[return-value]

    def _inner_params(self, k: int, boost: float, sel) -> "faiss.SearchParameters":
        """Search parameters for the inner index of the tomb layout, widened by ``boost`` (1/selectivity)."""
        if self._hnsw is not None:
            return faiss.SearchParametersHNSW(efSearch=min(4096, math.ceil(max(self.ef_search, k) * boost)), sel=sel)
        try:  # e.g. IDMap2 over IVF, as written by older xsearch versions
            ivf = faiss.extract_index_ivf(self.index.index)
            return faiss.SearchParametersIVF(nprobe=min(ivf.nlist, math.ceil(ivf.nprobe * boost)), sel=sel)
        except RuntimeError:
            return faiss.SearchParameters(sel=sel)

    def _slot_vectors(self, slots: np.ndarray) -> np.ndarray:
        """Stored (decoded) vectors of internal slots of an IDMap2 layout."""
        if len(slots) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _exact(self, queries: np.ndarray, k: int, slots: np.ndarray):
        scores, ids = exact_search(queries, self._slot_vectors(slots), self._slots()[slots], k)
        return scores, ids

    # ----- GPU --------------------------------------------------------------------------------------------------
    def to_gpu(self, enable: bool = True) -> bool:
        """Serve unfiltered searches from an fp16 GPU copy (Flat and IVF layouts); True if a GPU will be used.

        The CPU index stays authoritative: adds/removes go to it and drop the GPU copy, which is re-cloned lazily;
        filtered searches and k > 2048 run on CPU; ``save`` writes the CPU index."""
        self._gpu_wanted = bool(enable) and self.layout != "tomb" and _gpu.want_gpu(None)
        self._gpu_index = None
        return self._gpu_wanted

    def _gpu_for(self, k: int):
        if not self._gpu_wanted or k > _gpu.GPU_MAX_K:
            return None
        if self._gpu_index is None:
            source = self.index.index if self.layout == "idmap" else self.index
            self._gpu_index = _gpu.to_gpu(source, fp16=True)
            if self._gpu_index is None:
                self._gpu_wanted = False
            elif self.layout == "ivf":
                _gpu.set_nprobe(self._gpu_index, max(1, self.nprobe))
        return self._gpu_index

    # ----- persistence ------------------------------------------------------------------------------------------
    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids`` (decoded: approximate for SQ/PQ indexes); BadInput for unknown ids."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        try:
            return self.index.reconstruct_batch(np.ascontiguousarray(ids))
        except RuntimeError:
            missing = np.setdiff1d(ids, self.ids())[:5]
            raise BadInput(f"ids not in the index: {missing.tolist()}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename)."""
        atomic_write_with(path, lambda tmp: faiss.write_index(self.index, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int, spec: IndexSpec | None = None,
             mmap: bool = False) -> "VectorIndex":
        """Read an index file; ``mmap`` maps IVF lists / flat codes read-only instead of loading them into RAM."""
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"{path}: no such index file")
        index = _read(path, mmap)
        if spec is None:
            spec = IndexSpec(kind="loaded", factory=type(faiss.downcast_index(index)).__name__)
        vi = cls(dim, spec, index)
        vi.read_only = bool(mmap)
        return vi


def _read(path: Path, mmap: bool) -> "faiss.Index":
    flags = []
    if mmap:
        ro = faiss.IO_FLAG_READ_ONLY
        flags = [faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC | ro, faiss.IO_FLAG_MMAP | ro] if hasattr(
            faiss, "IO_FLAG_MMAP_IFC") else [faiss.IO_FLAG_MMAP | ro]
    for flag in flags:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            continue
    if mmap:
        warnings.warn(f"{path}: FAISS cannot memory-map this index type; loading it into RAM")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise BadInput(f"{path}: unreadable FAISS index ({str(exc).splitlines()[0][:120]})") from None


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
