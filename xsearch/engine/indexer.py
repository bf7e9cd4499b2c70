"""Incremental indexing of files and caption files, and re-embedding, through narrow reader/writer interfaces.

The indexer never sees a Collection: it reads stored rows through :class:`ItemReader` (the store satisfies it) and
changes the collection only through :class:`ItemWriter` (which the collection implements so that SQLite, FAISS and
its caches move together).
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..errors import BadInput
from ..media import AUDIO_EXTS, IMAGE_EXTS, TEXT_EXTS, FileInfo, discover, file_hash, shown
from ..media_formats import META_VERSION, photo_fields
from ..media_video import VIDEO_EXTS
from .batching import Batch, check_batching, embed_audio, embed_images, embed_texts
from .video import embed_videos, is_video_batch, stage_videos, write_video

if TYPE_CHECKING:  # pragma: no cover - SQLAlchemy loads with the first write, not with this module
    from ..store import ItemRecord, ItemRow

ProgressFn = Callable[[int, int], None]  # (advance, total) — total is sent once with advance 0


class ItemReader(Protocol):
    """Read access to stored items (``xsearch.store.Store`` satisfies it)."""

    def by_keys(self, keys: Sequence[str]) -> dict[str, ItemRow]: ...

    def rows(self, *, under: Sequence[str] | None = None, source: str | None = None) -> list[ItemRow]: ...

    def ids_where(self, *, under: Sequence[str] | None = None) -> np.ndarray: ...


class ItemWriter(Protocol):
    """Write access: every change goes to the metadata store and the vector index together."""

    def write(self, records: Sequence[ItemRecord], vectors: np.ndarray) -> list[int]: ...

    def delete(self, ids: Sequence[int]) -> list[int]: ...

    def touch(self, ids_mtimes: Iterable[tuple[int, int]]) -> None: ...

    def annotate(self, fields_by_id: dict[int, dict]) -> None: ...

    def write_group(self, parent: ItemRecord, children: Sequence[ItemRecord], vectors: np.ndarray) -> list[int]: ...


class Stager(Protocol):
    """Where re-embedded vectors wait until they are swapped in all at once (``Store`` satisfies it)."""

    def staged_ids(self, fingerprint: str) -> np.ndarray: ...

    def stage(self, ids: Sequence[int], vectors: np.ndarray | None, fingerprint: str,
              reasons: Sequence[str] | None = None) -> None: ...


@dataclass
class IndexReport:
    """What one ``add`` did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    captions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    outgrown: bool = False  # the FAISS index was chosen for another size: run `xsearch reindex`

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
                "captions": self.captions, "outgrown": self.outgrown, "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


@dataclass
class _Plan:
    new: list[FileInfo] = field(default_factory=list)
    changed: list[FileInfo] = field(default_factory=list)
    touched: list[tuple[int, int]] = field(default_factory=list)
    unchanged: int = 0
    gone: list[int] = field(default_factory=list)
    stale_meta: dict[int, str] = field(default_factory=dict)  # id -> path: unchanged photos whose EXIF is unread
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while walking


def plan(reader: ItemReader, roots: Sequence[str | os.PathLike[str]]) -> _Plan:
    """Compare the files under ``roots`` with the store: what is new, changed, unchanged or gone."""
    out = _Plan()
    files = list(discover(roots, on_skip=lambda path, reason: out.skipped.append((path, reason))))
    if not files and not out.skipped and not reader.ids_where(under=[_abs(r) for r in roots]).size:
        exts = ", ".join(sorted(IMAGE_EXTS | TEXT_EXTS | AUDIO_EXTS | VIDEO_EXTS))
        raise BadInput(f"{', '.join(shown(r) for r in roots)}: no supported files to index (looked for {exts})")
    stored = reader.by_keys([f.path for f in files])
    for f in files:
        row = stored.get(f.path)
        if row is None:
            out.new.append(f)
            continue
        if row.size == f.size and row.mtime_ns == f.mtime_ns:
            out.unchanged += 1
        elif row.sha256 == _hash_or_none(f.path):
            out.touched.append((row.id, f.mtime_ns))
            out.unchanged += 1
        else:
            out.changed.append(f)
            continue
        if row.modality == "image" and row.meta_version != META_VERSION:
            out.stale_meta[row.id] = f.path
    seen = {f.path for f in files}
    folder_roots = [_abs(r) for r in roots if Path(r).is_dir()]
    if folder_roots:
        out.gone = [r.id for r in reader.rows(under=folder_roots) if r.parent_id is None and r.source is None
                    and r.key not in seen]
    return out


def _abs(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())


def _hash_or_none(path: str) -> str | None:
    try:
        return file_hash(path)
    except OSError:
        return None


def add_files(reader: ItemReader, writer: ItemWriter, encoder: Encoder, roots: Sequence[str | os.PathLike[str]],
              progress: ProgressFn | None = None, workers: int | None = None, batch_size: int = 32,
              embed: Callable[..., None] | None = None) -> IndexReport:
    """Index new/changed files under ``roots`` and drop stored files that no longer exist there; ``embed``
    (an executor, default :func:`embed_files`) decodes and embeds, calling back here to commit each batch."""
    check_batching(batch_size, workers)
    p = plan(reader, roots)
    report = IndexReport(unchanged=p.unchanged, skipped=list(p.skipped))
    if p.gone:
        report.removed = len(writer.delete(p.gone))
    if p.touched:
        writer.touch(p.touched)
    if p.stale_meta:  # an older schema or EXIF reader: re-read metadata, keep the vector
        writer.annotate({item_id: photo_fields(path) for item_id, path in p.stale_meta.items()})
    todo = p.new + p.changed
    changed = {f.path for f in p.changed}
    progress = progress or (lambda advance, total: None)
    progress(0, len(todo))

    def on_batch(batch: Batch) -> None:
        if is_video_batch(batch):  # one video: its vectors are its moments'
            f = batch.files[0]
            try:
                record = _record(f, {**batch.extras[0], **_identity_after(f)})
            except BadInput as exc:
                on_error(f.path, str(exc))
                return
            write_video(writer, record, batch.extras[0]["moments"], batch.vectors)
        else:
            writer.write([_record(f, extra) for f, extra in zip(batch.files, batch.extras)], batch.vectors)
        report.updated += sum(f.path in changed for f in batch.files)
        report.added += sum(f.path not in changed for f in batch.files)
        progress(len(batch.files), len(todo))

    def on_error(path: str, reason: str) -> None:
        report.skipped.append((path, reason))
        progress(1, len(todo))

    (embed or embed_files)(encoder, todo, on_batch, on_error, workers, batch_size)
    return report


EMBEDS_AS = {"video": "image"}  # what the encoder must embed for a file of this modality (video: its key frames)


def embed_files(encoder: Encoder, todo: Sequence[FileInfo], on_batch: Callable[[Batch], None],
                on_error: Callable[[str, str], None], workers: int | None = None, batch_size: int = 32) -> None:
    """Embed files grouped by modality, in batches; bad files and unsupported modalities go to ``on_error``."""
    by_mod: dict[str, list[FileInfo]] = {}
    for f in todo:
        by_mod.setdefault(f.modality, []).append(f)
    for modality, files in by_mod.items():
        if not encoder.supports(EMBEDS_AS.get(modality, modality)):
            for f in files:
                on_error(f.path, f"{shown(f.path)}: encoder '{encoder.id}' cannot embed {modality}; skipped")
        elif modality == "image":
            embed_images(encoder, files, on_batch, on_error, batch_size=batch_size, workers=workers)
        elif modality == "text":
            embed_texts(encoder, files, on_batch, on_error)
        elif modality == "video":
            embed_videos(encoder, files, on_batch, on_error)
        else:
            embed_audio(encoder, files, on_batch, on_error)


def _identity_after(f: FileInfo) -> dict:
    """Size/mtime/sha256 of a file decoded straight from its path (video), taken after decoding: ``BadInput`` if it
    is not the file that was discovered any more (it will be picked up as new on the next run)."""
    def state() -> tuple[int, int]:
        st = os.stat(f.path)
        return st.st_size, st.st_mtime_ns

    try:
        before, digest, after = state(), file_hash(f.path), state()
    except OSError as exc:
        raise BadInput(f"{shown(f.path)}: file vanished or became unreadable while being indexed ({exc})") from None
    if before != after or before != (f.size, f.mtime_ns):
        raise BadInput(f"{shown(f.path)}: file changed while being indexed; skipped (the next run indexes it)")
    return {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": digest}


def _record(f: FileInfo, extra: dict) -> "ItemRecord":
    from ..store import ItemRecord

    photo = photo_fields(f.path, extra.get("exif")) if f.modality == "image" else {}
    return ItemRecord(key=f.path, path=f.path, modality=f.modality, size=extra.get("size", f.size),
                      mtime_ns=extra.get("mtime_ns", f.mtime_ns), sha256=extra.get("sha256") or file_hash(f.path),
                      width=extra.get("width"), height=extra.get("height"),
                      duration=extra.get("duration"), sample_rate=extra.get("sample_rate"),
                      text=(extra.get("text") or "")[:2000] or None, **photo)


# ---- captions ----------------------------------------------------------------------------------
def read_captions(csv_path: str | os.PathLike[str]) -> list[tuple[int, str, str]]:
    """Rows ``(line, absolute file path, caption)`` of a ``file,caption`` CSV (header optional)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"{csv_path}: unreadable captions file ({exc})") from None
    out = []
    for line, row in enumerate(rows, start=1):
        if line == 1 and row and row[0].strip().lower() in {"file", "path", "image", "filename"}:
            continue
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[1].strip():
            raise BadInput(f"{csv_path}:{line}: expected 'file,caption'")
        path = Path(row[0].strip()).expanduser()
        path = path if path.is_absolute() else csv_path.parent / path
        out.append((line, str(path.resolve()), ",".join(row[1:]).strip()))
    if not out:
        raise BadInput(f"{csv_path}: no captions in file")
    return out


def add_captions(reader: ItemReader, writer: ItemWriter, encoder: Encoder, csv_path: str | os.PathLike[str],
                 report: IndexReport, batch_size: int = 256) -> None:
    """Index captions as text items linked to their (already indexed) image; drop this file's stale captions."""
    from ..store import ItemRecord

    source = str(Path(csv_path).resolve())
    rows = read_captions(csv_path)
    parents = reader.by_keys(sorted({p for _, p, _ in rows}))
    wanted: dict[str, "ItemRecord"] = {}
    for line, path, caption in rows:
        parent = parents.get(path)
        if parent is None:
            report.skipped.append((f"{source}:{line}", f"{source}:{line}: {path} is not indexed; caption skipped"))
            continue
        key = f"{path}#caption:{hashlib.sha1(caption.encode()).hexdigest()[:16]}"
        wanted[key] = ItemRecord(key=key, path=path, modality="text", text=caption, source=source, parent_id=parent.id)
    stale = [r.id for r in reader.rows(source=source) if r.key not in wanted]
    if stale:
        writer.delete(stale)
    known = reader.by_keys(list(wanted))
    todo = [rec for key, rec in wanted.items() if key not in known or known[key].parent_id != rec.parent_id]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        writer.write(chunk, encoder.encode_text([r.text or "" for r in chunk]))
    report.captions += len(todo)


# ---- re-embedding (a new encoder version) -------------------------------------------------------
@dataclass
class ReembedReport:
    """What one ``reembed`` did. ``dropped``: items whose file is gone or unreadable (removed, with their captions)."""

    encoder: str
    old_fingerprint: str
    new_fingerprint: str
    reembedded: int = 0
    resumed: int = 0  # staged by an earlier run that was interrupted
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    removed: int = 0  # items removed in all: the dropped ones and their captions

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "old_fingerprint": self.old_fingerprint,
                "new_fingerprint": self.new_fingerprint, "reembedded": self.reembedded, "resumed": self.resumed,
                "removed": self.removed, "dropped": [{"path": p, "reason": r} for p, r in self.dropped]}


def stage_reembed(rows: Sequence[ItemRow], stager: Stager, encoder: Encoder, report: ReembedReport,
                  progress: ProgressFn | None = None, workers: int | None = None, batch_size: int = 32) -> None:
    """Re-embed every row not yet staged for ``encoder.fingerprint``: files from disk, captions from their stored
    text. Each batch is staged (committed) as it is done, so an interrupted run resumes where it stopped."""
    check_batching(batch_size, workers)
    fp = encoder.fingerprint
    done = set(stager.staged_ids(fp).tolist())
    todo = [r for r in rows if r.id not in done]
    report.resumed = len(rows) - len(todo)
    progress = progress or (lambda advance, total: None)
    progress(0, len(todo))
    videos = {r.id for r in todo if r.modality == "video" and r.parent_id is None}
    videos |= {r.parent_id for r in todo if r.modality == "video" and r.parent_id is not None}
    todo_ = [r for r in todo if r.modality != "video"]
    captions = [r for r in todo_ if r.parent_id is not None or r.source is not None]
    files = [r for r in todo_ if r.parent_id is None and r.source is None]
    ids_of = {r.path: r.id for r in files}

    def on_batch(batch: Batch) -> None:
        stager.stage([ids_of[f.path] for f in batch.files], batch.vectors, fp)
        report.reembedded += len(batch.files)
        progress(len(batch.files), len(todo))

    def on_error(path: str, reason: str) -> None:
        stager.stage([ids_of[path]], None, fp, [reason])
        progress(1, len(todo))

    present = []
    for r in files:
        if Path(r.path).is_file():
            present.append(FileInfo(r.path, r.modality, r.size or 0, r.mtime_ns or 0))
        else:
            on_error(r.path, f"{shown(r.path)}: file is gone")
    embed_files(encoder, present, on_batch, on_error, workers, batch_size)
    if videos:
        report.reembedded += stage_videos([r for r in rows if r.id in videos],
                                          [r for r in rows if r.parent_id in videos and r.modality == "video"],
                                          stager.stage, encoder, fp)
        progress(sum(r.modality == "video" for r in todo), len(todo))
    for start in range(0, len(captions), 256):
        chunk = captions[start : start + 256]
        stager.stage([r.id for r in chunk], encoder.encode_text([r.text or "" for r in chunk]), fp)
        report.reembedded += len(chunk)
        progress(len(chunk), len(todo))
