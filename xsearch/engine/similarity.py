"""Similarity: embedding mixed lists, cosine matrices, and saved matrices between two sets (folders, text files with
one text per line, or collections)."""
from __future__ import annotations

import csv as csvlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_path, atomic_write_bytes
from ..config import DEFAULT_ENCODER, INFO_FILE, META_FILE, CollectionInfo
from ..encoders import Encoder, create
from ..errors import BadInput, EncoderMismatch
from ..media import discover, load_text, modality_of
from .versioning import stale_message, stored_fingerprint

Query = str | os.PathLike[str] | np.ndarray  # a text, a file path, or a vector


COLLECTION_PREFIX = "collection:"


def embed_many(encoder: Encoder, items: Sequence[Query]) -> np.ndarray:
    """Embed a mixed list: vectors pass through, existing files by modality, anything else as text."""
    out = np.zeros((len(items), encoder.dim), np.float32)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out[i] = item
            continue
        kind = modality_of(item) if Path(str(item)).is_file() else None
        groups.setdefault(kind or "literal", []).append(i)
    embedders = {"image": lambda vs: encoder.encode_images([str(v) for v in vs]),
                 "audio": lambda vs: encoder.encode_audio([str(v) for v in vs]),
                 "text": lambda vs: encoder.encode_text([load_text(v) for v in vs]),
                 "literal": lambda vs: encoder.encode_text([str(v) for v in vs])}
    for kind, idx in groups.items():
        out[idx] = embedders[kind]([items[i] for i in idx])
    return out


def cosine_matrix(encoder: Encoder, rows: Sequence[Query], cols: Sequence[Query]) -> np.ndarray:
    """Cosine similarities between two mixed lists (see :func:`embed_many`)."""
    return embed_many(encoder, rows) @ embed_many(encoder, cols).T


@dataclass
class MatrixResult:
    values: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    encoder: str


@dataclass
class _Set:
    spec: str
    collection: str | None = None
    items: list[str] | None = None  # file paths or texts to embed


def _resolve(spec: str, home: Path) -> _Set:
    if spec.startswith(COLLECTION_PREFIX):
        return _Set(spec, collection=spec[len(COLLECTION_PREFIX):])
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [f.path for f in discover([path])]
        if not files:
            raise BadInput(f"{spec}: folder has no supported files")
        return _Set(spec, items=files)
    if path.is_file():
        if path.suffix.lower() in (".txt", ".md", ".csv", ""):
            lines = [t.strip() for t in path.read_text(encoding="utf-8", errors="replace").splitlines() if t.strip()]
            if not lines:
                raise BadInput(f"{spec}: no lines of text")
            return _Set(spec, items=lines)
        return _Set(spec, items=[str(path.resolve())])
    if (home / spec / INFO_FILE).exists():
        return _Set(spec, collection=spec)
    raise BadInput(f"{spec}: not a folder, a text file or a collection in {home} (use collection:NAME)")


def _collection_info(home: Path, name: str) -> tuple[CollectionInfo, str]:
    """collection.json of ``name`` and the fingerprint its vectors were made with (no FAISS index is opened)."""
    from ..store import Store

    info = CollectionInfo.load(home / name)
    store = Store(home / name / META_FILE, read_only=True)
    try:
        return info, stored_fingerprint(info, store)
    finally:
        store.close()


def _encoder_for(sets: list[_Set], home: Path, requested: str | None) -> Encoder:
    infos = {s.collection: _collection_info(home, s.collection) for s in sets if s.collection}
    names = {info.encoder for info, _ in infos.values()}
    if len(names) > 1:
        raise EncoderMismatch(f"the two collections were built with different encoders: {', '.join(sorted(names))}")
    if names and requested and create(requested).id not in names:
        raise EncoderMismatch(f"collection encoder '{next(iter(names))}' differs from --encoder '{requested}'")
    encoder = create(requested or (next(iter(names)) if names else DEFAULT_ENCODER))
    if any(s.collection is None for s in sets):  # something is embedded now: stored vectors must be of this version
        for name, (_, fp) in infos.items():
            message = stale_message(name, encoder, fp)
            if message:
                raise EncoderMismatch(message)
    return encoder


def _embed(s: _Set, home: Path, encoder: Encoder) -> tuple[np.ndarray, list[str]]:
    if s.collection:
        from ..store import Store

        info = CollectionInfo.load(home / s.collection)
        store = Store(home / s.collection / META_FILE, read_only=True)
        try:
            rows = store.rows()
            vectors = store.vectors([r.id for r in rows], info.dim)
        finally:
            store.close()
        if not rows:
            raise BadInput(f"collection '{s.collection}' is empty")
        return vectors, [r.path if r.parent_id is None else f"{r.path}: {r.text}" for r in rows]
    return embed_many(encoder, s.items or []), list(s.items or [])


def similarity_matrix(rows: str, cols: str, home: str | os.PathLike[str], encoder: str | None = None) -> MatrixResult:
    """Cosine similarities (rows x cols) of two sets given as folder / text file / collection specs."""
    home = Path(home)
    sets = [_resolve(rows, home), _resolve(cols, home)]
    enc = _encoder_for(sets, home, encoder)
    (rv, rl), (cv, cl) = (_embed(s, home, enc) for s in sets)
    return MatrixResult(rv @ cv.T, rl, cl, enc.id)


def save_matrix(result: MatrixResult, out: Path, csv: bool = False, plot: Path | None = None) -> list[Path]:
    """Write ``out`` (.npy), ``<stem>.rows.txt`` / ``<stem>.cols.txt`` labels, and optionally .csv and a PNG heatmap."""
    out = out if out.suffix == ".npy" else out.with_suffix(out.suffix + ".npy") if out.suffix else out.with_suffix(".npy")
    buf = io.BytesIO()
    np.save(buf, result.values.astype(np.float32))
    atomic_write_bytes(out, buf.getvalue())
    written = [out]
    for kind, labels in (("rows", result.row_labels), ("cols", result.col_labels)):
        path = out.with_suffix(f".{kind}.txt")
        atomic_write_bytes(path, ("\n".join(l.replace("\n", " ") for l in labels) + "\n").encode())
        written.append(path)
    if csv:
        written.append(_write_csv(result, out.with_suffix(".csv")))
    if plot is not None:
        written.append(_write_plot(result, plot))
    return written


def _write_csv(result: MatrixResult, path: Path) -> Path:
    text = io.StringIO()
    writer = csvlib.writer(text)
    writer.writerow([""] + result.col_labels)
    for label, row in zip(result.row_labels, result.values):
        writer.writerow([label] + [f"{v:.6f}" for v in row])
    atomic_write_bytes(path, text.getvalue().encode())
    return path


def _write_plot(result: MatrixResult, path: Path, cell: int = 24) -> Path:
    """A heatmap PNG (Pillow only): blue = low, yellow = high similarity."""
    from PIL import Image

    v = result.values
    lo, hi = float(v.min()), float(v.max())
    t = (v - lo) / (hi - lo if hi > lo else 1.0)
    rgb = np.stack([t * 255, 64 + t * 160, (1 - t) * 200], axis=-1).astype(np.uint8)
    scale = max(1, min(cell, 1200 // max(v.shape)))
    img = Image.fromarray(rgb).resize((v.shape[1] * scale, v.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
