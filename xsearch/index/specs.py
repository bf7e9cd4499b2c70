"""Index specs: named kinds -> FAISS factory strings, the ``auto`` choice, training, and tuning to a target recall.

``auto`` rule (n vectors of dimension d, memory budget B, default half the machine's RAM):
flat (exact) below ``FLAT_MAX`` vectors when it fits in B; otherwise the first of IVF-Flat, IVF-SQfp16, IVF-SQ8,
OPQ+IVF-PQ whose estimated size fits in B. IVF uses ~4*sqrt(n) lists (power of two, >= 39 training points per
list), is trained on a sample, then nprobe is raised until recall@10 against exact search on held-out queries
(leave-one-out: sampled stored vectors, their own id excluded) reaches the target plus a small margin
(min(0.02, (1 - target) / 3), because the tuning queries are a sample); HNSW tunes efSearch the same way.
The chosen factory, parameters and measured recall are kept in ``IndexSpec`` (and so in collection.json).
"""
from __future__ import annotations

import math
import os
import re
import time

import numpy as np

import faiss

from ..config import IndexSpec
from ..errors import BadInput, DimensionMismatch
from . import gpu as _gpu
from .exact import exact_search, recall_at
from .faiss_index import VectorIndex

SPEC_CHOICES = ("auto", "flat", "flat-fp16", "flat-sq8", "ivf", "ivf-fp16", "ivf-sq8", "ivfpq", "opq-ivfpq",
                "hnsw", "hnsw-sq8")
FLAT_MAX = 50_000
HNSW_M = 32
RECALL_K = 10
MAX_TUNING_QUERIES = 1000
AUTO_CHAIN = ("ivf", "ivf-fp16", "ivf-sq8", "opq-ivfpq")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str | int) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes; BadInput on anything else."""
    if isinstance(text, int) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match:
        raise BadInput(f"bad memory size '{text}': use e.g. 512M, 4G, 1.5GB")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 1:
        raise BadInput(f"memory size '{text}' must be positive")
    return int(value)


def default_memory() -> int:
    """Half of physical RAM (the budget ``auto`` uses when none is given)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def nlist_for(n: int) -> int:
    """IVF list count: the power of two nearest 4*sqrt(n), with at least 39 vectors per list to train on."""
    want = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    cap = 2 ** int(math.log2(max(1, n // 39))) if n >= 39 else 1
    return int(max(1, min(want, cap, 65536)))


def pq_m_for(dim: int, bytes_per_vector: float) -> int:
    """PQ sub-quantizer count (bytes per code) that fits ``bytes_per_vector``; at least 4, at most dim/4."""
    for m in (64, 48, 32, 24, 16, 12, 8, 4):
        if m <= max(4, dim // 4) and m <= bytes_per_vector:
            return m
    return 4


def factory_for(kind: str, n: int, dim: int, memory_bytes: int | None = None) -> str:
    """FAISS factory string for a named kind at this size."""
    nlist = nlist_for(n)
    nbits = 8 if n >= 256 * 39 else 4  # 8-bit PQ codebooks need ~10k training vectors
    if kind in ("ivfpq", "opq-ivfpq"):
        budget = (memory_bytes or default_memory()) / max(n, 1) - 8 - 40
        m = pq_m_for(dim, budget)
        dout = max(m, (dim // m) * m)
        return f"OPQ{m}_{dout},IVF{nlist},PQ{m}x{nbits}" if kind == "opq-ivfpq" else _plain_pq(dim, nlist, m, nbits)
    table = {
        "flat": "Flat", "flat-fp16": "SQfp16", "flat-sq8": "SQ8",
        "ivf": f"IVF{nlist},Flat", "ivf-fp16": f"IVF{nlist},SQfp16", "ivf-sq8": f"IVF{nlist},SQ8",
        "hnsw": f"HNSW{HNSW_M}", "hnsw-sq8": f"HNSW{HNSW_M},SQ8",
    }
    if kind not in table:
        raise BadInput(f"unknown index kind '{kind}': choose one of {', '.join(SPEC_CHOICES)} or a FAISS factory string")
    return table[kind]


def _plain_pq(dim: int, nlist: int, m: int, nbits: int) -> str:
    while dim % m:  # plain PQ needs m | dim
        m //= 2
    return f"IVF{nlist},PQ{max(1, m)}x{nbits}"


def estimate_bytes(kind: str, n: int, dim: int, memory_bytes: int | None = None) -> int:
    """Rough resident size of an index of this kind (codes + ids + id maps + centroids/graph)."""
    code = {"flat": 4 * dim, "flat-fp16": 2 * dim, "flat-sq8": dim, "ivf": 4 * dim, "ivf-fp16": 2 * dim,
            "ivf-sq8": dim, "hnsw": 4 * dim + 2 * HNSW_M * 4 * 1.1, "hnsw-sq8": dim + 2 * HNSW_M * 4 * 1.1}
    if kind in ("ivfpq", "opq-ivfpq"):
        per = int(re.search(r"PQ(\d+)", factory_for(kind, n, dim, memory_bytes)).group(1))
    else:
        per = code.get(kind, 4 * dim)
    overhead = 48  # per vector: the id + IDMap2's reverse map or the IVF id->slot hashtable
    centroids = nlist_for(n) * dim * 4 if kind.startswith(("ivf", "opq")) else 0
    return int(n * (per + overhead) + centroids)


def choose_kind(n: int, dim: int, memory_bytes: int | None = None) -> str:
    """The kind ``auto`` picks for ``n`` vectors of ``dim`` under a memory budget."""
    budget = memory_bytes or default_memory()
    if n < FLAT_MAX:
        for kind in ("flat", "flat-fp16", "flat-sq8"):
            if estimate_bytes(kind, n, dim) <= budget:
                return kind
    for kind in AUTO_CHAIN:
        if estimate_bytes(kind, n, dim, budget) <= budget:
            return kind
    return AUTO_CHAIN[-1]


def resolve(request: str, n: int, dim: int, memory_bytes: int | None = None) -> tuple[str, str]:
    """(kind, factory) for a request: 'auto', a named kind, or a raw FAISS factory string (kind 'custom')."""
    request = (request or "auto").strip()
    if request.lower() == "auto":
        kind = choose_kind(n, dim, memory_bytes)
        return kind, factory_for(kind, n, dim, memory_bytes)
    if request.lower() in SPEC_CHOICES:
        return request.lower(), factory_for(request.lower(), n, dim, memory_bytes)
    try:
        faiss.index_factory(dim, request, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise BadInput(f"unknown index '{request}': choose one of {', '.join(SPEC_CHOICES)} "
                       "or give a FAISS factory string such as 'IVF1024,Flat'") from None
    return "custom", request


def check_request(request: str, dim: int) -> None:
    """BadInput for an index request (``auto``, a named kind, a factory string) that cannot be built."""
    resolve(request, 1, dim)


def outgrown(spec: IndexSpec, n: int, dim: int, memory_bytes: int | None = None) -> bool:
    """True when the collection has outgrown ``spec``: auto would now pick another kind (auto-built specs),
    an IVF's list count is 4x off the size-appropriate one, or an exact flat index no longer fits the budget."""
    if spec.params.get("request", "auto") == "auto" and spec.kind != choose_kind(n, dim, memory_bytes):
        return True
    nlist = spec.params.get("nlist")
    if nlist and n >= 39 * 4:
        ratio = nlist_for(n) / int(nlist)
        if ratio >= 4 or ratio <= 0.25:
            return True
    if spec.kind == "flat" and memory_bytes and estimate_bytes("flat", n, dim) > memory_bytes:
        return True
    return False


# ----- building -------------------------------------------------------------------------------------------------
def build_index(vectors: np.ndarray, ids: np.ndarray, request: str = "auto", target_recall: float = 0.95,
                memory_bytes: int | None = None, use_gpu: bool | None = None, seed: int = 0) -> VectorIndex:
    """Choose (``request``), train on a sample, fill and tune an index over ``vectors``/``ids``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2:
        raise DimensionMismatch(f"vectors must be a 2-d array, got shape {vectors.shape}")
    if len(ids) != len(vectors):
        raise BadInput(f"{len(ids)} ids for {len(vectors)} vectors")
    if not 0 < target_recall <= 1:
        raise BadInput(f"target recall {target_recall} must be in (0, 1]")
    n, dim = vectors.shape
    gpu_ok = _gpu.want_gpu(use_gpu)  # MissingDependency when use_gpu=True and FAISS sees no GPU
    kind, factory = resolve(request, n, dim, memory_bytes)
    params: dict = {"request": request, "target_recall": float(target_recall), "n_built": int(n),
                    "memory_budget": int(memory_bytes or default_memory())}
    index = VectorIndex(dim, IndexSpec(kind=kind, factory=factory, params=params))
    if n == 0:
        return index
    started = time.perf_counter()
    on_gpu = _fill(index, vectors, ids, gpu_ok, seed)
    params.update(build_seconds=round(time.perf_counter() - started, 3), gpu=on_gpu)
    if index._ivf is not None:
        params["nlist"] = int(index._ivf.nlist)
    recall = tune(index, vectors, ids, target_recall, seed)
    index.spec = IndexSpec(kind=kind, factory=factory, params=params | index.spec.params, recall=recall)
    if gpu_ok:
        index.to_gpu()  # tuned on CPU; unfiltered searches now run on an fp16 GPU copy
    return index


def rebuild(index: VectorIndex, request: str = "auto", **options) -> VectorIndex:
    """``xsearch reindex`` helper: a new index (auto-chosen by default) over the vectors ``index`` holds; drops
    tombstones. Flat / IVF-Flat / HNSW give back the exact vectors; SQ/PQ give decoded ones, so prefer calling
    ``build_index`` with the original vectors when the caller has them."""
    ids = index.ids()
    return build_index(index.reconstruct(ids), ids, request, **options)


def _fill(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, gpu_ok: bool, seed: int) -> bool:
    """Train on a sample and add everything; IVF goes through the GPU when one is available. Returns on_gpu."""
    if len(np.unique(ids)) != len(ids):
        raise BadInput("duplicate ids given to build_index")
    train = _training_sample(index, vectors, seed)
    if index.layout == "ivf" and gpu_ok:
        cpu, used = _gpu.train_and_add(index.index, train, vectors, ids)
        faiss.extract_index_ivf(cpu).set_direct_map_type(faiss.DirectMap.Hashtable)
        index.__init__(index.dim, index.spec, cpu)
        return used
    index.train(train)
    index.add(ids, vectors)
    return False


def _training_sample(index: VectorIndex, vectors: np.ndarray, seed: int) -> np.ndarray:
    if index.index.is_trained:
        return vectors[:0]
    nlist = int(index._ivf.nlist) if index._ivf is not None else 1
    size = min(len(vectors), max(64 * nlist if nlist < 1024 else 39 * nlist, 256 * 40))
    if size >= len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))
    return vectors[rows]


def tune(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, target: float, seed: int = 0) -> float:
    """Raise nprobe / efSearch until leave-one-out recall@10 >= ``target``; store the choice; return the recall."""
    n = len(vectors)
    k = min(RECALL_K, n - 1)
    if k < 1:
        return 1.0
    if index.spec.factory == "Flat":
        return 1.0  # exact by construction
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, min(MAX_TUNING_QUERIES, max(50, n // 20), n), replace=False))
    queries = vectors[rows]
    _, truth = exact_search(queries, vectors, ids, k + 1)
    truth = _drop_self(truth, ids[rows], k)

    def measure(value: int | None = None, name: str = "") -> float:
        if name:
            index.apply_params({name: value})
        _, found = index.search(queries, k + 1)
        return recall_at(_drop_self(found, ids[rows], k), truth, k)

    if index._ivf is not None:
        name, values = "nprobe", _ladder(int(index._ivf.nlist))
    elif index._hnsw is not None:
        name, values = "efSearch", _ladder(4096, start=16)
    else:
        return round(measure(), 4)
    aim = min(1.0, target + min(0.02, (1 - target) / 3))  # margin: tuning queries are a sample
    value, recall = _search_ladder(measure, name, values, aim)
    index.spec = IndexSpec(index.spec.kind, index.spec.factory, index.spec.metric,
                           {**index.spec.params, name: int(value), "recall_k": k, "tuning_queries": len(rows),
                            "target_met": bool(recall >= target), "tuned_for": round(aim, 4)}, round(recall, 4))
    index.apply_params({name: value})
    return round(recall, 4)


def _ladder(top: int, start: int = 1) -> list[int]:
    values, v = [], start
    while v < top:
        values.append(v)
        v *= 2
    return values + [top]


def _search_ladder(measure, name: str, values: list[int], target: float) -> tuple[int, float]:
    """Smallest value on the doubling ladder reaching ``target`` (refined by bisection), else the best plateau."""
    seen: dict[int, float] = {}
    prev = None
    for v in values:
        seen[v] = measure(v, name)
        if seen[v] >= target:
            lo, hi = (prev or v), v
            while prev is not None and hi - lo > max(1, lo // 8):
                mid = (lo + hi) // 2
                seen[mid] = measure(mid, name)
                lo, hi = (mid, hi) if seen[mid] < target else (lo, mid)
            return hi, seen[hi]
        if prev is not None and seen[v] - seen[prev] < 0.001 and seen[v] > 0.5 and v >= 64:
            break  # plateau: quantisation, not probing, limits recall
        prev = v
    best = max(seen.values())
    v = min(x for x, r in seen.items() if r >= best - 0.005)
    return v, seen[v]


def _drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own id from its result row and keep ``k`` columns (-1 padded)."""
    out = np.full((len(found), k), -1, np.int64)
    for r, (row, me) in enumerate(zip(found, self_ids)):
        kept = row[row != me][:k]
        out[r, : len(kept)] = kept
    return out
