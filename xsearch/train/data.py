"""Paired training data: manifest readers (CSV / JSONL / folder) and a deterministic split by item.

A manifest lists pairs of things that belong together. Accepted shapes:

- ``path,caption`` (image–text or audio–text; ``file`` / ``image`` / ``audio`` and ``text`` are accepted aliases),
- ``path_a,path_b`` (any two modalities, each a file: image, audio or a text file),

as a CSV with a header row or as JSON lines with the same keys. Relative paths are resolved against the
manifest's folder. A folder is accepted too: it must hold ``captions.csv`` / ``captions.jsonl`` (or
``manifest.csv`` / ``manifest.jsonl``), or else image/audio files with a same-named ``.txt`` caption beside them.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BadInput
from ..media import load_text, modality_of

PATH_KEYS = ("path", "file", "image", "audio", "filename")
CAPTION_KEYS = ("caption", "text", "query")
FOLDER_MANIFESTS = ("captions.csv", "captions.jsonl", "manifest.csv", "manifest.jsonl")


@dataclass(frozen=True)
class Item:
    """One side of a pair: a file (``path``) or an inline caption (``text``)."""

    modality: str
    path: str | None = None
    text: str | None = None

    @property
    def key(self) -> str:
        return self.path if self.path is not None else f"text:{self.text}"

    def load_text(self) -> str:
        """The text of a text item (inline caption or text file)."""
        return self.text if self.text is not None else load_text(self.path)  # type: ignore[arg-type]


@dataclass
class PairSet:
    """Unique items of side ``a`` and side ``b`` and the ``(m, 2)`` index pairs linking them."""

    a: list[Item]
    b: list[Item]
    pairs: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def modality_a(self) -> str:
        return self.a[0].modality if self.a else "image"

    @property
    def modality_b(self) -> str:
        return self.b[0].modality if self.b else "text"

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, pair_idx: np.ndarray) -> "PairSet":
        """The pairs ``pair_idx`` with items re-numbered (unused items dropped)."""
        sel = self.pairs[np.asarray(pair_idx, dtype=np.int64)]
        ua, ia = np.unique(sel[:, 0], return_inverse=True)
        ub, ib = np.unique(sel[:, 1], return_inverse=True)
        pairs = np.stack([ia.reshape(-1), ib.reshape(-1)], axis=1).astype(np.int64)
        return PairSet([self.a[i] for i in ua], [self.b[i] for i in ub], pairs, self.source, dict(self.meta))


class _Builder:
    """Accumulates rows into unique items + pairs, checking that each side keeps one modality."""

    def __init__(self, source: str):
        self.source = source
        self.items: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self.lists: tuple[list[Item], list[Item]] = ([], [])
        self.pairs: list[tuple[int, int]] = []

    def add(self, a: Item, b: Item, where: str) -> None:
        idx = []
        for side, item in enumerate((a, b)):
            lst = self.lists[side]
            if lst and lst[0].modality != item.modality:
                raise BadInput(f"{where}: {'ab'[side]}-side item is {item.modality} but earlier rows are "
                               f"{lst[0].modality} (one modality per column)")
            idx.append(self.items[side].setdefault(item.key, len(lst)))
            if idx[-1] == len(lst):
                lst.append(item)
        self.pairs.append((idx[0], idx[1]))

    def build(self) -> PairSet:
        if not self.pairs:
            raise BadInput(f"{self.source}: no pairs found")
        pairs = np.unique(np.asarray(self.pairs, dtype=np.int64), axis=0)  # duplicate rows count once
        return PairSet(self.lists[0], self.lists[1], pairs, self.source)


def read_pairs(source: str | Path) -> PairSet:
    """Read a CSV / JSONL manifest or a folder (see module doc); ``BadInput`` names the file and line of a problem."""
    source = Path(source).expanduser()
    if not source.exists():
        raise BadInput(f"{source}: no such manifest file or folder")
    if source.is_dir():
        return _read_folder(source)
    builder = _Builder(str(source))
    for where, row in _rows(source):
        builder.add(*_row_items(row, source.parent, where), where)
    return builder.build()


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:line``, row dict) for every non-empty row of a CSV or JSONL file."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: unreadable manifest ({exc})") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        yield from _json_array(path, text)
        return
    if suffix in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise BadInput(f"{path}:{n}: each line must be a JSON object")
            yield f"{path}:{n}", row
        return
    delimiter = "\t" if suffix == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise BadInput(f"{path}: empty manifest (a header row like 'path,caption' or 'path_a,path_b' is needed)")
    for row in reader:
        if None in row:
            raise BadInput(f"{path}:{reader.line_num}: more fields than the header has (quote captions with commas)")
        if any((v or "").strip() for v in row.values()):
            yield f"{path}:{reader.line_num}", {k.strip().lower(): v for k, v in row.items() if k}


def _json_array(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    """Rows of a ``.json`` file holding one array of objects (``file:#index`` locations)."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(f"{path}:#{i}: each array element must be a JSON object")
        yield f"{path}:#{i}", row


def _row_items(row: dict, base: Path, where: str) -> tuple[Item, Item]:
    row = {str(k).strip().lower(): v for k, v in row.items()}
    if "path_a" in row or "path_b" in row:
        return _file_item(row.get("path_a"), base, where), _file_item(row.get("path_b"), base, where)
    path_key = next((k for k in PATH_KEYS if k in row), None)
    cap_key = next((k for k in CAPTION_KEYS if k in row), None)
    if path_key is None or cap_key is None:
        raise BadInput(f"{where}: expected columns 'path,caption' or 'path_a,path_b', got {', '.join(map(str, row))}")
    caption = str(row[cap_key] or "").strip()
    if not caption:
        raise BadInput(f"{where}: empty caption")
    return _file_item(row[path_key], base, where), Item("text", text=caption)


def _file_item(value, base: Path, where: str) -> Item:
    if value is None or not str(value).strip():
        raise BadInput(f"{where}: empty path")
    path = Path(str(value).strip()).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_file():
        raise BadInput(f"{where}: {path}: no such file")
    modality = modality_of(path)
    if modality is None:
        raise BadInput(f"{where}: {path}: unsupported file type (not image, audio or text)")
    return Item(modality, path=str(path))


def _read_folder(folder: Path) -> PairSet:
    for name in FOLDER_MANIFESTS:
        if (folder / name).is_file():
            return read_pairs(folder / name)
    builder = _Builder(str(folder))
    for p in sorted(folder.rglob("*")):
        kind = modality_of(p) if p.is_file() and not p.name.startswith(".") else None
        sidecar = p.with_suffix(".txt")
        if kind in ("image", "audio") and sidecar.is_file():
            for n, line in enumerate(load_text(sidecar).splitlines(), 1):
                if line.strip():
                    builder.add(Item(kind, path=str(p.resolve())), Item("text", text=line.strip()), f"{sidecar}:{n}")
    if not builder.pairs:
        raise BadInput(f"{folder}: no {' / '.join(FOLDER_MANIFESTS)} and no image/audio files with a same-named "
                       ".txt caption")
    return builder.build()


def split_pairs(data: PairSet, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split by ``a`` item, as (train, val) row indices into ``data.pairs``.

    All pairs of one ``a`` item (e.g. the five captions of an image) land on the same side. A positive
    fraction gives at least 2 validation items; 0 gives an empty validation side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n = len(data.a)
    n_val = max(2, int(round(val_fraction * n))) if val_fraction > 0 else 0
    if n_val and n - n_val < 2:
        raise BadInput(f"{data.source}: {n} distinct items are too few for a {val_fraction:.0%} validation split "
                       "(need at least 2 on each side)")
    order = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[order[:n_val]] = True
    pair_val = is_val[data.pairs[:, 0]]
    return np.flatnonzero(~pair_val), np.flatnonzero(pair_val)


def split_by_item(data: PairSet, val_fraction: float, seed: int = 0) -> tuple[PairSet, PairSet | None]:
    """:func:`split_pairs` as two re-numbered PairSets (validation ``None`` when the fraction is 0)."""
    train_idx, val_idx = split_pairs(data, val_fraction, seed)
    return data.subset(train_idx), (data.subset(val_idx) if len(val_idx) else None)


def unique_batches(pairs: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle pair indices into batches in which no ``a`` or ``b`` item repeats (no false in-batch negatives)."""
    pending = list(rng.permutation(len(pairs)))
    out: list[np.ndarray] = []
    while pending:
        batch, seen_a, seen_b, rest = [], set(), set(), []
        for i in pending:
            a, b = int(pairs[i, 0]), int(pairs[i, 1])
            if len(batch) < batch_size and a not in seen_a and b not in seen_b:
                batch.append(i)
                seen_a.add(a)
                seen_b.add(b)
            else:
                rest.append(i)
        out.append(np.asarray(batch, dtype=np.int64))
        pending = rest
    return out
