"""Optional FAISS GPU helpers: clone to a CUDA device for build/search, back to CPU for saving.

Everything here is guarded by ``gpu_count() > 0``; CPU-only builds of FAISS never reach the GPU calls.
"""
from __future__ import annotations

import os
import warnings

import faiss

from ..errors import MissingDependency

GPU_MAX_K = 2048  # FAISS GPU k-selection limit
_RESOURCES: dict[int, object] = {}


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 for CPU-only builds or when ``XSEARCH_NO_GPU`` is set)."""
    if os.environ.get("XSEARCH_NO_GPU"):
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except RuntimeError:  # pragma: no cover - broken CUDA runtime
        return 0


def want_gpu(use_gpu: bool | None) -> bool:
    """Resolve a tri-state request: None = use a GPU when one is visible; True = require one."""
    if use_gpu is False:
        return False
    have = gpu_count() > 0 and hasattr(faiss, "StandardGpuResources")
    if use_gpu and not have:
        raise MissingDependency("no CUDA GPU visible to FAISS: install the 'gpu' extra (faiss-gpu) on a CUDA machine")
    return have


def resources(device: int = 0):
    """One StandardGpuResources per device, kept for the process (they own CUDA memory pools)."""
    if device not in _RESOURCES:
        _RESOURCES[device] = faiss.StandardGpuResources()
    return _RESOURCES[device]


def cloner_options(fp16: bool):
    co = faiss.GpuClonerOptions()
    co.useFloat16 = bool(fp16)  # fp16 storage for Flat / IVF-Flat, fp16 lookup tables for IVF-PQ
    return co


def to_gpu(index: "faiss.Index", device: int = 0, fp16: bool = True) -> "faiss.Index | None":
    """A GPU copy of ``index`` (Flat / IVF family), or None (with a warning) when FAISS cannot place it there."""
    try:
        return faiss.index_cpu_to_gpu(resources(device), device, index, cloner_options(fp16))
    except (RuntimeError, AttributeError) as exc:
        warnings.warn(f"FAISS could not move this index to GPU {device}; searching on CPU ({str(exc)[:120]})")
        return None


def to_cpu(index: "faiss.Index") -> "faiss.Index":
    return faiss.index_gpu_to_cpu(index)


def train_and_add(index: "faiss.Index", train, vectors, ids, device: int = 0) -> tuple["faiss.Index", bool]:
    """Train and fill an IVF index on the GPU (float32 storage for fidelity); return (CPU index to save, used GPU)."""
    gpu = to_gpu(index, device, fp16=False)
    if gpu is None:  # e.g. a PQ size the GPU kernels do not support: do it on CPU
        index.train(train)
        index.add_with_ids(vectors, ids)
        return index, False
    gpu.train(train)
    gpu.add_with_ids(vectors, ids)
    return to_cpu(gpu), True


def set_nprobe(gpu_index: "faiss.Index", nprobe: int) -> None:
    faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", int(nprobe))
