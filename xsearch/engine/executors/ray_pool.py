"""The ``ray`` executor: decode + embed on a Ray actor pool, commit in the driver.

The driver (the collection's single writer) cuts the planned files into batches and keeps at most
``in_flight`` per actor outstanding (backpressure: memory stays bounded however many files there are). Each actor
loads the encoder once (by its registry id) and embeds a batch through the same ``embed_files`` as the local path,
so vectors and bad-file messages are the same. Results are handed to ``on_batch`` / ``on_error`` in submission
order, so rows get the ids a local run would give. A batch is committed by the driver as soon as it and every
earlier batch are back: kill the driver and a re-run plans only what was not committed; kill a worker and Ray
restarts the actor and retries its batches (``max_restarts`` / ``max_task_retries``).
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Sequence

from ...encoders.base import Encoder
from ...errors import EncoderMismatch, MissingDependency
from ...media import FileInfo
from ..batching import Batch, OnBatch, OnError

RETRIES = 3  # actor restarts and task retries after a worker dies
IN_FLIGHT = 2  # outstanding batches per actor
FAIL_ONCE_ENV = "XSEARCH_RAY_FAIL_ONCE"  # tests: a marker path; the first actor call that finds it absent dies
GPU_BATCH_FACTOR = 4  # batches are this many times larger on a GPU actor


def import_ray() -> Any:
    """``import ray`` or MissingDependency naming the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("--ray needs Ray: pip install 'xsearch[ray]' (or pip install ray)") from None
    return ray


def connect(address: str | None = "auto") -> Any:
    """Attach to Ray: an initialised session as is; ``auto`` = $RAY_ADDRESS, else the latest ``ray start`` on this
    machine, else a new local instance; anything else is a cluster address (``HOST:6379``, ``ray://HOST:10001``)."""
    ray = import_ray()
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("XSEARCH_") or k.endswith("_OFFLINE")}
        ray.init(address=None if address in (None, "", "auto") else address, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    return ray


def gpus_per_actor(ray: Any) -> float:
    """1 when the cluster has GPUs (one actor per GPU), else 0."""
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def default_actors(ray: Any) -> int:
    """One actor per GPU, else one per 4 CPUs the cluster has (at least 1)."""
    res = ray.cluster_resources()
    return int(res["GPU"]) if res.get("GPU", 0) >= 1 else max(1, int(res.get("CPU", 1)) // 4)


class EmbedWorker:
    """A Ray actor: the encoder, loaded once; embeds one batch of files per call."""

    def __init__(self, encoder_id: str, fingerprint: str, threads: int | None = None):
        import torch

        from ...encoders import create

        if threads:
            torch.set_num_threads(threads)
        self.encoder = create(encoder_id)
        if self.encoder.fingerprint != fingerprint:
            raise EncoderMismatch(f"worker {os.uname().nodename} has {encoder_id} version "
                                  f"{self.encoder.fingerprint or 'unversioned'}, the driver {fingerprint or 'unversioned'}: "
                                  "install the same xsearch on every node")

    def embed(self, files: list[FileInfo]) -> tuple[list[Batch], list[tuple[str, str]]]:
        """(batches, (path, reason) errors) of one chunk of files, exactly as the local path embeds them."""
        from ..indexer import embed_files

        _fail_once()
        batches: list[Batch] = []
        errors: list[tuple[str, str]] = []
        embed_files(self.encoder, files, batches.append, lambda p, r: errors.append((p, r)), 0, max(1, len(files)))
        return batches, errors

    def device(self) -> str:
        return str(getattr(self.encoder, "device", "cpu"))


def _fail_once() -> None:
    marker = os.environ.get(FAIL_ONCE_ENV)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # a worker dying mid-batch, as an OOM kill or a lost node would


class RayExecutor:
    """``embed_files`` on a Ray actor pool (see the module docstring)."""

    def __init__(self, address: str | None = "auto", actors: int | None = None, in_flight: int = IN_FLIGHT,
                 threads: int | None = None):
        self.address, self.actors, self.in_flight, self.threads = address, actors, in_flight, threads

    def __call__(self, encoder: Encoder, todo: Sequence[FileInfo], on_batch: OnBatch, on_error: OnError,
                 workers: int | None = None, batch_size: int = 32) -> None:
        todo = [f for f in todo if _supported(encoder, f, on_error)]
        if not todo:
            return
        ray = connect(self.address)
        gpus = gpus_per_actor(ray)
        size = batch_size * (GPU_BATCH_FACTOR if gpus else 1)
        chunks = _chunks(todo, size)
        n = max(1, min(self.actors or default_actors(ray), len(chunks)))
        remote = ray.remote(EmbedWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=RETRIES,
                                                 max_task_retries=RETRIES)
        pool = [remote.remote(encoder.id, encoder.fingerprint, self.threads) for _ in range(n)]
        try:
            _drive(ray, pool, chunks, self.in_flight * n, on_batch, on_error)
        finally:
            for actor in pool:
                ray.kill(actor)


def _supported(encoder: Encoder, f: FileInfo, on_error: OnError) -> bool:
    from ..indexer import EMBEDS_AS

    if encoder.supports(EMBEDS_AS.get(f.modality, f.modality)):  # a video is embedded through its frames
        return True
    on_error(f.path, f"{f.path}: encoder '{encoder.id}' cannot embed {f.modality}; skipped")
    return False


def _chunks(files: Sequence[FileInfo], size: int) -> list[list[FileInfo]]:
    """Batches of one modality each, in the local path's order (grouped by modality, first seen first)."""
    by_mod: dict[str, list[FileInfo]] = {}
    for f in files:
        by_mod.setdefault(f.modality, []).append(f)
    return [group[i : i + size] for group in by_mod.values() for i in range(0, len(group), size)]


def _drive(ray: Any, pool: list, chunks: list[list[FileInfo]], window: int, on_batch: OnBatch,
           on_error: OnError) -> None:
    """Submit round-robin with at most ``window`` outstanding; deliver results in submission order."""
    pending: deque = deque()
    nxt = 0
    while nxt < len(chunks) or pending:
        while nxt < len(chunks) and len(pending) < window:
            pending.append(pool[nxt % len(pool)].embed.remote(chunks[nxt]))
            nxt += 1
        batches, errors = ray.get(pending.popleft())
        for path, reason in errors:
            on_error(path, reason)
        for batch in batches:
            on_batch(batch)
