"""Embedding files in batches: images decoded in a DataLoader worker pool so decoding overlaps inference."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..errors import BadInput
from ..media import FileInfo, FileState, decode_audio, load_text, open_photo, read_consistent, shown


@dataclass
class Batch:
    """Files embedded together: ``extras[i]`` holds metadata read while decoding ``files[i]``."""

    files: list[FileInfo]
    vectors: np.ndarray
    extras: list[dict[str, Any]] = field(default_factory=list)


OnBatch = Callable[[Batch], None]
OnError = Callable[[str, str], None]  # (path, one-line reason)


CPU_CORES_PER_WORKER = 8  # on CPU, decoding a photo costs ~1/10 of EfficientNet-Lite0 inference
MIN_CORES_FOR_WORKERS = 4  # below this a worker process only steals cycles from inference (2 cores: 54 vs 44 img/s)
MAX_WORKERS = 4


def default_workers(device: str = "cpu") -> int:
    """Decode workers: ``$XSEARCH_WORKERS``, else by core count: on a GPU min(4, cores) (decoding is the
    bottleneck there); on CPU none below 4 cores, then one per 8 cores (at most 4), leaving inference the rest."""
    env = os.environ.get("XSEARCH_WORKERS")
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise BadInput(f"XSEARCH_WORKERS={env!r}: not a whole number") from None
    cores = os.cpu_count() or 1
    if not device.startswith("cpu"):
        return min(MAX_WORKERS, cores)
    if cores < MIN_CORES_FOR_WORKERS:
        return 0
    return max(1, min(MAX_WORKERS, cores // CPU_CORES_PER_WORKER))


def check_batching(batch_size: int, workers: int | None) -> None:
    """``BadInput`` for a batch size below 1 or a negative worker count."""
    if batch_size < 1:
        raise BadInput(f"batch size must be at least 1 (got {batch_size})")
    if workers is not None and workers < 0:
        raise BadInput(f"workers must be 0 or more (got {workers})")


def inference_threads(workers: int, current: int, device: str = "cpu") -> int | None:
    """Torch threads while ``workers`` decode processes run on CPU: at most the cores they leave free (None: keep)."""
    if workers <= 0 or not device.startswith("cpu"):
        return None
    return max(1, min(current, (os.cpu_count() or 1) - workers))


class _ImageFiles:
    """Map-style dataset: decode + preprocess one image; failures come back as messages, not exceptions."""

    def __init__(self, files: Sequence[FileInfo], preprocess: Callable):
        self.files, self.preprocess = list(files), preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i].path
        try:
            (image, (w, h), exif), state = read_consistent(path, lambda fh: open_photo(path, fh=fh))
            return i, self.preprocess(image), {"width": w, "height": h, "exif": exif, **_state(state)}, None
        except BadInput as exc:
            return i, None, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the whole run
            return i, None, None, f"{shown(path)}: cannot decode image ({type(exc).__name__}: {exc})"


def _state(state: FileState) -> dict[str, Any]:
    """The read file's identity, for its record: what was embedded is what is stored as its size/mtime/sha256."""
    return {"size": state.size, "mtime_ns": state.mtime_ns, "sha256": state.sha256}


def emit(encode: Callable[[list], np.ndarray], inputs: list, files: list[FileInfo], extras: list[dict[str, Any]],
         on_batch: OnBatch, on_error: OnError) -> None:
    """Embed one batch and hand it on; if the batch fails, embed item by item so that only the bad one is skipped.
    Rows with NaN/inf are reported, never stored."""
    try:
        vectors = np.asarray(encode(inputs), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop the run
        if len(inputs) == 1:
            on_error(files[0].path, f"{shown(files[0].path)}: cannot embed ({type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0]})")
            return
        for one in zip(inputs, files, extras):
            emit(encode, [one[0]], [one[1]], [one[2]], on_batch, on_error)
        return
    finite = np.isfinite(vectors).all(axis=1)
    for f in (f for f, ok in zip(files, finite) if not ok):
        on_error(f.path, f"{shown(f.path)}: the encoder produced a non-finite (NaN/inf) vector; not stored")
    if finite.any():
        keep = np.flatnonzero(finite)
        on_batch(Batch([files[i] for i in keep], vectors[keep], [extras[i] for i in keep]))


def _collate(items):
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def embed_images(encoder: Encoder, files: Sequence[FileInfo], on_batch: OnBatch, on_error: OnError,
                 batch_size: int = 32, workers: int | None = None) -> None:
    """Decode (in ``workers`` processes) and embed images, reporting each batch and each bad file."""
    import torch
    from torch.utils.data import DataLoader

    device = str(getattr(encoder, "device", "cpu"))
    workers = default_workers(device) if workers is None else workers
    loader = DataLoader(_ImageFiles(files, encoder.preprocess_image), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    previous = torch.get_num_threads()
    threads = inference_threads(workers, previous, device)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _embed_loaded(encoder, files, loader, on_batch, on_error)
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _embed_loaded(encoder: Encoder, files: Sequence[FileInfo], loader: Any, on_batch: OnBatch,
                  on_error: OnError) -> None:
    """Embed the decoded batches a loader yields; report bad files."""
    import torch

    for items in loader:
        good = [(i, t, extra) for i, t, extra, err in items if err is None]
        for i, _, _, err in items:
            if err is not None:
                on_error(files[i].path, err)
        if good:
            emit(lambda ts: encoder.encode_image_batch(torch.stack(ts)), [t for _, t, _ in good],
                 [files[i] for i, _, _ in good], [extra for _, _, extra in good], on_batch, on_error)


def embed_texts(encoder: Encoder, files: Sequence[FileInfo], on_batch: OnBatch, on_error: OnError,
                batch_size: int = 64) -> None:
    """Read text files (one item per file) and embed them."""
    _embed_read(files, batch_size, lambda p, fh: load_text(p, fh=fh), lambda text: (text, {"text": text}),
                encoder.encode_text, on_batch, on_error)


def embed_audio(encoder: Encoder, files: Sequence[FileInfo], on_batch: OnBatch, on_error: OnError,
                batch_size: int = 16) -> None:
    """Embed audio files one batch at a time; each file's duration and sample rate go in its extras."""
    def describe(clip):
        return (clip.wave, clip.sample_rate), {"duration": clip.duration, "sample_rate": clip.sample_rate}

    _embed_read(files, batch_size, lambda p, fh: decode_audio(p, fh=fh), describe, encoder.encode_audio, on_batch,
                on_error)


def _embed_read(files: Sequence[FileInfo], batch_size: int, decode: Callable[[str, BinaryIO], Any],
                describe: Callable[[Any], tuple[Any, dict[str, Any]]], encode: Callable[[list], np.ndarray],
                on_batch: OnBatch, on_error: OnError) -> None:
    """Decode each file from one consistent read (``decode(path, fh)``), in batches; ``describe`` turns a decoded
    value into (encoder input, extras); a file that fails goes to ``on_error`` and the batch goes on."""
    for start in range(0, len(files), batch_size):
        chunk, inputs, extras = [], [], []
        for f in files[start : start + batch_size]:
            try:
                value, state = read_consistent(f.path, lambda fh, p=f.path: decode(p, fh))
            except BadInput as exc:
                on_error(f.path, str(exc))
                continue
            item, extra = describe(value)
            chunk.append(f)
            inputs.append(item)
            extras.append({**extra, **_state(state)})
        if chunk:
            emit(encode, inputs, chunk, extras, on_batch, on_error)
