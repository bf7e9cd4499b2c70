"""Collection: ties an encoder, a FAISS index and the SQLite store together. Only here are FAISS ids mapped to rows."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from ..config import (DEFAULT_COLLECTION, DEFAULT_ENCODER, INFO_FILE, META_FILE, VECTORS_FILE, CollectionInfo,
                      IndexSpec, default_home)
from ..atomic import file_crc
from ..encoders import Encoder, create, l2_normalize
from ..errors import (BadInput, CollectionBusy, DimensionMismatch, EncoderMismatch, MissingCollection, MissingItem,
                      XSearchWarning)
from . import indexer
from .indexer import IndexReport, ProgressFn, ReembedReport
from .locking import Say, WriterLock
from .query import Filters, Hit, ModalityIds, default_min_score, default_modalities, ranked
from .similarity import Query, cosine_matrix
from .versioning import FINGERPRINT_KEY, stale_message, stored_fingerprint
from .video import is_frame_key

if TYPE_CHECKING:  # pragma: no cover - faiss and SQLAlchemy load with the first open, not with this module
    from ..index import IdSet, VectorIndex
    from ..store import ItemRecord, ItemRow, Store
    from .dupes import DupeGroup

GENERATION_KEY = "generation"  # meta keys: bumped by every save; the FAISS file's CRC-32, size and mtime at that save
CRC_KEY, SIZE_KEY, MTIME_KEY = "faiss_crc32", "faiss_size", "faiss_mtime_ns"
CRC_AT_OPEN = 256 << 20  # FAISS files up to this size are checksummed at every open
# zero-shot prompt per modality (a video is tagged by its key frames, so like a photo)
TAG_TEMPLATES = {"image": "a photo of a {}.", "audio": "the sound of {}.", "text": "{}", "video": "a photo of a {}."}


def _prompt(template: str, label: str) -> str:
    """``template`` with ``label`` in its one ``{}``; ``BadInput`` for a template that is not like "a photo of a {}."."""
    try:
        prompt = template.format(label)
        marker = template.format("\x00")
    except (IndexError, KeyError, ValueError, AttributeError) as exc:
        raise BadInput(f"--template {template!r}: expected one {{}} for the label, e.g. 'a photo of a {{}}.' "
                       f"({type(exc).__name__}: {exc})") from None
    if "\x00" not in marker:
        raise BadInput(f"--template {template!r}: has no {{}} where the label goes, e.g. 'a photo of a {{}}.'")
    return prompt


def list_collections(home: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the collections under ``home`` (folders holding a collection.json)."""
    root = Path(home or default_home())
    return sorted(p.name for p in root.iterdir() if (p / INFO_FILE).is_file()) if root.is_dir() else []


class Collection:
    """A searchable collection stored in ``<home>/<name>/`` (collection.json, vectors.faiss, meta.sqlite).

    Writes (add, remove, reembed, tag, rebuild_index, save) take the collection's writer lock
    (:class:`~xsearch.engine.locking.WriterLock`); readers never take it and never write.

    >>> col = Collection.open("indexes", "photos", create=True)   # doctest: +SKIP
    >>> col.add(["./photos"]); col.search(text="a dog on a beach", k=5)   # doctest: +SKIP
    """

    def __init__(self, folder: Path, info: CollectionInfo, store: "Store", index: "VectorIndex",
                 encoder: Encoder | None = None, lock: WriterLock | None = None):
        self.folder, self.info, self.store, self.index = folder, info, store, index
        self._encoder = encoder
        self._modality = ModalityIds(store)
        self._dirty = False
        self.lock = lock or WriterLock(folder, folder.name)
        self._unsaved = False  # the index in memory was rebuilt from the store and vectors.faiss is behind it
        self._generation = store.get_meta(GENERATION_KEY)
        self._signature = disk_signature(folder)
        self.warnings: list[str] = []  # what this handle warned about (each once)

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, name: str = DEFAULT_COLLECTION,
             encoder: str | Encoder | None = None, create: bool = False, index: str = "auto",
             target_recall: float = 0.95, memory_bytes: int | None = None,
             read_only: bool = False, wait: bool | float = False, say: Say | None = None) -> "Collection":
        """Open collection ``name`` under ``home``; with ``create=True`` make it (with ``encoder``) if missing.

        ``index`` (``auto``, ``flat``, ``ivf``, ``ivfpq``, ``hnsw``, ... or a FAISS factory string), ``target_recall``
        and ``memory_bytes`` choose the FAISS index of a new collection. ``read_only=True`` memory-maps the FAISS
        file where FAISS can (fast opens of big indexes for querying) and never writes any file: SQLite is opened
        read-only, an index that is stale, missing or damaged is rebuilt in memory from the stored vectors (with one
        warning), and add/remove/tag/reembed raise. ``wait``: what a write does when another process holds the
        writer lock (False: CollectionBusy at once; True: wait; seconds: wait that long), ``say`` gets the waiting
        messages. Raises EncoderMismatch if ``encoder`` differs from the one the collection was built with, or
        (when the encoder is first needed) if the collection was built with another version of it.
        """
        from ..store import Store

        folder = collection_folder(home, name)
        if not (folder / INFO_FILE).exists():
            if not create:
                raise MissingCollection(f"no collection '{name}' in {folder.parent} (run `xsearch index PATH` first, "
                                        f"or pass --home/--collection)")
            return cls._create(folder, name, encoder or DEFAULT_ENCODER,
                               dict(index_request=index, target_recall=target_recall, memory_bytes=memory_bytes),
                               WriterLock(folder, name, wait, say))
        if create:
            _check_index_choice(index, target_recall, None)
        info = CollectionInfo.load(folder)
        enc = _check_encoder(info, encoder)
        store = Store(folder / META_FILE, read_only=read_only)
        try:
            col = cls(folder, info, store, None, enc, WriterLock(folder, name, wait, say))  # type: ignore[arg-type]
            col._load()
            if enc is not None:
                col.check_encoder()
        except BaseException:
            store.close()
            raise
        return col

    @classmethod
    def _create(cls, folder: Path, name: str, encoder: str | Encoder, index_options: dict,
                lock: WriterLock) -> "Collection":
        from ..index import VectorIndex
        from ..store import Store

        enc = encoder if isinstance(encoder, Encoder) else create(encoder)
        _check_index_choice(index_options["index_request"], index_options["target_recall"], enc.dim)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"{folder}: cannot create the collection folder ({exc.strerror or exc})") from None
        with lock:
            if (folder / INFO_FILE).exists():  # another process created it while we waited for the lock
                return cls.open(folder.parent, name, encoder=enc, wait=lock.wait, say=lock.say)
            info = CollectionInfo(name=name, encoder=enc.id, dim=enc.dim, encoder_fingerprint=enc.fingerprint,
                                  index=IndexSpec(), **index_options)
            store = Store(folder / META_FILE, create=True)
            store.set_metas({"encoder": enc.id, FINGERPRINT_KEY: enc.fingerprint})
            col = cls(folder, info, store, VectorIndex(enc.dim, info.index), enc, lock)
            col.save()
        return col

    def _load(self) -> None:
        """(Re)read collection.json's fingerprint fix-up and the FAISS index, as a fresh open does."""
        from ..index import VectorIndex

        stored_fp = stored_fingerprint(self.info, self.store)
        if stored_fp != self.info.encoder_fingerprint:  # killed between the re-embed swap and writing collection.json
            self.info = self.info.touched(encoder_fingerprint=stored_fp)
        self.index = VectorIndex(self.info.dim, self.info.index)
        self._load_index(mmap=self.read_only)

    def _load_index(self, mmap: bool = False) -> None:
        """Load vectors.faiss; if it is missing, stale (interrupted or running write), damaged or inconsistent,
        a writer that can take the lock rebuilds and saves it, anyone else rebuilds it in memory and warns once."""
        problem = self._index_problem(mmap)
        if problem is None:
            return
        if not self.read_only and self._repair_if_free():
            self.warn(f"collection '{self.name}': {problem}; rebuilt it from {META_FILE} and saved it")
            return
        self.index = self._built_index()
        self.index.read_only = self.read_only
        self._unsaved = True
        self.warn(f"collection '{self.name}': {problem}; searching an index rebuilt in memory from {META_FILE}"
                  + (" (the next write, or `xsearch verify --repair`, saves it)"))

    def _index_problem(self, mmap: bool) -> str | None:
        """Why vectors.faiss cannot be used as it is (None: loaded into ``self.index``)."""
        from ..index.shards import load_index

        path = self.folder / VECTORS_FILE
        meta = self.store.metas()
        if meta.get("dirty") == "1":
            return f"{VECTORS_FILE} is behind {META_FILE} (a write is running or was interrupted)"
        if not path.exists():
            return f"{VECTORS_FILE} is missing"
        damaged = checksum_problem(path, meta)
        if damaged:
            return damaged
        try:
            index = load_index(path, self.info.dim, self.info.index, mmap=mmap)  # a sharded one too
        except (BadInput, DimensionMismatch) as exc:
            return f"{VECTORS_FILE} is unreadable ({exc})"
        count = self.store.count()
        if index.ntotal != count:
            return f"{VECTORS_FILE} holds {index.ntotal} vectors, {META_FILE} {count}"
        self.index = index
        return None

    def _repair_if_free(self) -> bool:
        """A writable handle: rebuild and save the index now if no other process is writing; False if one is."""
        try:
            self.lock.acquire(wait=False)
        except (CollectionBusy, BadInput):  # another writer, or storage this process cannot write
            return False
        try:
            self.store.writing(True)
            if self._index_problem(False) is None:  # the writer we raced with has just finished
                return True
            self.rebuild_index()
            return True
        finally:
            self._end_writing()

    def warn(self, message: str) -> None:
        """Warn once per handle (XSearchWarning: the CLI prints it as one line on stderr)."""
        if message not in self.warnings:
            self.warnings.append(message)
            warnings.warn(message, XSearchWarning, stacklevel=3)

    def refresh(self) -> bool:
        """See changes committed by writers since this handle was opened (or last refreshed); True if it reloaded.

        Cheap when nothing changed (a few ``stat`` calls). A handle of a collection in the middle of a write sees
        every batch committed so far (from an in-memory index); it never writes.
        """
        from ..store import Store

        signature = disk_signature(self.folder)
        if signature == self._signature or self.lock.held:
            return False
        info = CollectionInfo.load(self.folder)
        store = Store(self.folder / META_FILE, read_only=self.read_only)
        old = self.store
        self.info, self.store, self._modality = info, store, ModalityIds(store)
        self._signature, self._generation, self._unsaved = signature, store.get_meta(GENERATION_KEY), False
        old.close()
        self._load()
        return True

    # ---- the writer's side ----------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writer lock around a write: the first level also puts SQLite in WAL mode and catches up with
        what other writers committed since this handle loaded (reloading, repairing a stale index)."""
        self._writable()
        outer = not self.lock.held
        self.lock.acquire()
        try:
            if outer:
                self.store.writing(True)
                self.store.upgrade()  # an older metadata schema gains its new columns (migrate.py)
                self._catch_up()
            yield
        except OSError as exc:
            raise BadInput(f"{self.folder}: cannot write the collection ({exc.strerror or exc})") from None
        finally:
            if outer:
                self._end_writing()
            else:
                self.lock.release()

    def _end_writing(self) -> None:
        try:
            self.store.writing(False)
        finally:
            self.lock.release()

    def _catch_up(self) -> None:
        """Under the lock: reload if another writer saved since we loaded; rebuild an index that is stale."""
        meta = self.store.metas()
        if meta.get(GENERATION_KEY) != self._generation or meta.get("dirty") == "1" or self._unsaved:
            self.info = CollectionInfo.load(self.folder)
            self._modality.reset()
            stored_fp = stored_fingerprint(self.info, self.store)
            if stored_fp != self.info.encoder_fingerprint:
                self.info = self.info.touched(encoder_fingerprint=stored_fp)
            if self._index_problem(False) is not None:
                self.index = self._built_index()
                self._unsaved = True
            self._generation = meta.get(GENERATION_KEY)

    def rebuild_index(self, request: str | None = None, target_recall: float | None = None,
                      memory_bytes: int | None = None, shards: int | None = None, ray: str | None = None) -> None:
        """Build a new FAISS index from the vectors kept in SQLite (the store is the source of truth).

        ``request`` etc. change the collection's index choice (``xsearch reindex --index ...``); by default the
        recorded choice is applied again at the current size, so an ``auto`` collection that grew gets a bigger index.
        ``shards`` (>= 2) splits it into that many shards (1: one index again), built as Ray tasks when ``ray`` gives
        an address (``auto`` or HOST:PORT).
        """
        if request is not None or target_recall is not None:
            _check_index_choice(request or self.info.index_request,
                                self.info.target_recall if target_recall is None else target_recall, self.info.dim)
        with self._writing():
            changes = {k: v for k, v in dict(index_request=request, target_recall=target_recall,
                                             memory_bytes=memory_bytes, shards=shards).items() if v is not None}
            self.info = self.info.touched(**changes)
            self.index = self._built_index(ray)
            self._modality.reset()
            self.save()
            self._drop_stale_shards()

    def _drop_stale_shards(self) -> None:
        """Delete shard files of an earlier shard count, once the new index is saved (a reader that still opens
        one finds it missing and searches an index rebuilt from meta.sqlite instead)."""
        from ..index.shards import stale_shard_files

        for file in stale_shard_files(self.folder / VECTORS_FILE, self.info.shards):
            file.unlink(missing_ok=True)

    def _built_index(self, ray: str | None = None) -> "VectorIndex":
        """A new FAISS index of every stored vector, as the collection's index choice asks."""
        from ..index import build_index

        pairs = list(self.store.iter_vectors(self.info.dim))
        ids = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        vectors = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros((0, self.info.dim), np.float32)
        if self.info.shards > 1:
            from .sharding import build_shards

            return build_shards(vectors, ids, self.info, ray)  # type: ignore[return-value]
        return build_index(vectors, ids, self.info.index_request, self.info.target_recall, self.info.memory_bytes)

    def index_outgrown(self) -> bool:
        """True when the index was chosen for a different size than the collection has now (see ``reindex``)."""
        from ..index import outgrown

        return outgrown(self.index.spec, self.index.ntotal, self.info.dim, self.info.memory_bytes)

    def _settle_index(self) -> None:
        """After adding: build the requested index the first time there is data for it (later growth: ``reindex``)."""
        built_for = self.index.spec.params.get("request")
        if self.index.ntotal and (built_for != self.info.index_request or
                                  (self.index.spec.kind == "flat" and self.index_outgrown())):
            self.rebuild_index()

    # ---- the encoder and its version ----------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The collection's encoder; EncoderMismatch if this xsearch has another version of it (``reembed``)."""
        enc = self._current_encoder()
        self.check_encoder()
        return enc

    def _current_encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = create(self.info.encoder)
        return self._encoder

    @property
    def stale(self) -> str | None:
        """Why the stored vectors cannot be compared with this xsearch's encoder (another version), else None."""
        return stale_message(self.name, self._current_encoder(), self.info.encoder_fingerprint)

    def check_encoder(self) -> None:
        """EncoderMismatch (one line, saying to run ``xsearch reindex --reembed``) if the collection is stale."""
        message = self.stale
        if message:
            raise EncoderMismatch(message)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def index_spec(self) -> IndexSpec:
        """The FAISS index actually built (kind, factory string, parameters, measured recall)."""
        return self.index.spec

    @property
    def read_only(self) -> bool:
        """Opened with ``read_only=True``: the handle never writes (memory-mapped index, read-only SQLite)."""
        return bool(self.store.read_only)

    def __len__(self) -> int:
        return self.index.ntotal

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # ---- writing ------------------------------------------------------------------------------
    def add(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
            captions: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None,
            workers: int | None = None, batch_size: int = 32, executor: str = "local") -> IndexReport:
        """Index files/folders incrementally (new or changed files only; deleted files dropped), then captions.

        Unreadable files are skipped and listed in the report; nothing already indexed is lost. ``executor``:
        ``local`` (this process) or ``ray`` / ``ray:ADDRESS`` (decode + embed on a Ray cluster, commit here).
        """
        from .executors import get_executor

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self._writable()
        encoder = self.encoder
        with self._writing():
            writer = _Writer(self)
            try:
                report = (indexer.add_files(self.store, writer, encoder, paths, progress, workers, batch_size,
                                            get_executor(executor))
                          if paths else IndexReport())
                if captions is not None:
                    indexer.add_captions(self.store, writer, encoder, captions, report)
                self._settle_index()
                report.outgrown = self.index_outgrown()
            finally:
                self.save()
        return report

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Drop files (or everything under folders) from the collection; return how many items went."""
        under = [str(Path(p).expanduser().resolve()) for p in paths]
        with self._writing():
            ids = self.store.ids_where(under=under)
            removed = _Writer(self).delete(ids.tolist()) if ids.size else []
            self.save()
        return len(removed)

    def reembed(self, progress: ProgressFn | None = None, workers: int | None = None, batch_size: int = 32,
                index: str | None = None, target_recall: float | None = None,
                memory_bytes: int | None = None) -> ReembedReport:
        """Re-embed every item with this xsearch's version of the collection's encoder (files from disk, captions
        from their stored text), keeping ids, metadata and tags; then rebuild the index.

        New vectors are staged in SQLite (an interrupted run resumes) and swapped in by one transaction, so the
        index never mixes two versions. Items whose file is gone or unreadable are dropped and reported.
        ``index`` etc. change the index choice as in :meth:`rebuild_index`.
        """
        enc = self._current_encoder()
        with self._writing():
            report = ReembedReport(enc.id, self.info.encoder_fingerprint, enc.fingerprint)
            indexer.stage_reembed(self.store.rows(), self.store, enc, report, progress, workers, batch_size)
            self.info = self.info.touched(dim=enc.dim, encoder_fingerprint=enc.fingerprint)
            report.dropped, removed = self.store.swap_staged(enc.fingerprint, {FINGERPRINT_KEY: enc.fingerprint,
                                                                                "dirty": "1"})
            report.removed = len(removed)
            self._dirty = True
            self.info.save(self.folder)  # the new fingerprint; the store already says so and is marked dirty
            self.rebuild_index(index, target_recall, memory_bytes)  # saves index + collection.json, marks it clean
        return report

    def tag(self, labels: Sequence[str], k: int = 3, template: str | None = None,
            modality: str = "image") -> dict[str, list[tuple[str, float]]]:
        """Zero-shot tagging: the ``k`` best labels for every ``modality`` item, stored as tags; returns path -> tags.

        ``template`` defaults per modality: "a photo of a {}." (image, video), "the sound of {}." (audio), "{}"
        (text). A video is tagged as a whole: a label scores its best key frame.
        """
        self._writable()
        if not labels:
            raise BadInput("zero-shot tagging needs at least one label")
        if modality not in TAG_TEMPLATES:
            raise BadInput(f"cannot tag modality '{modality}' (use image, audio, text or video)")
        template = template or TAG_TEMPLATES[modality]
        label_vecs = self.encoder.encode_text([_prompt(template, label) for label in labels])
        with self._writing():
            rows, sims = (self._video_scores if modality == "video" else self._item_scores)(modality, label_vecs)
            top = np.argsort(-sims, axis=1)[:, :k]
            tags = {r.id: [(labels[j], float(sims[i, j])) for j in top[i]] for i, r in enumerate(rows)}
            self.store.set_tags(tags)
        return {r.path: tags[r.id] for r in rows}

    def _item_scores(self, modality: str, label_vecs: np.ndarray) -> tuple[list, np.ndarray]:
        """Items of ``modality`` with a vector, and their cosine to each label."""
        rows = self.store.rows(modalities=[modality])
        return rows, self.vectors([r.id for r in rows]) @ label_vecs.T

    def _video_scores(self, _modality: str, label_vecs: np.ndarray) -> tuple[list, np.ndarray]:
        """Video items and, per label, the best cosine over their key frames (audio moments left out)."""
        rows = self.store.rows(modalities=["video"])
        frames = [r for r in rows if r.parent_id is not None and is_frame_key(r.key)]
        framed = {f.parent_id for f in frames}
        videos = [r for r in rows if r.parent_id is None and r.id in framed]
        sims = self.vectors([f.id for f in frames]) @ label_vecs.T
        best = {v.id: np.full(len(label_vecs), -np.inf, np.float32) for v in videos}
        for f, row in zip(frames, sims):
            np.maximum(best[f.parent_id], row, out=best[f.parent_id])
        return videos, np.stack([best[v.id] for v in videos]) if videos else np.zeros((0, len(label_vecs)))

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self.store.set_meta("dirty", "1")
            self._dirty = True

    def _writable(self) -> None:
        if self.index.read_only or self.store.read_only:
            raise BadInput(f"collection '{self.name}' was opened read-only (memory-mapped); open it without "
                           "read_only to change it")

    def save(self) -> None:
        """Write vectors.faiss and collection.json atomically, then, in one SQLite transaction, record the FAISS
        file's checksum, bump the generation and mark the store clean."""
        with self._writing():
            self._mark_dirty()  # a kill between the two files and the store leaves the dirty flag, not a bad checksum
            path = self.folder / VECTORS_FILE
            self.index.save(path)
            st = path.stat()
            self.info = self.info.touched(counts=self.store.counts(), index=self.index.spec)
            self.info.save(self.folder)
            self._generation = str(int(self.store.get_meta(GENERATION_KEY) or 0) + 1)
            self.store.set_metas({"dirty": "0", GENERATION_KEY: self._generation, CRC_KEY: file_crc(path),
                                  SIZE_KEY: str(st.st_size), MTIME_KEY: str(st.st_mtime_ns)})
            self._dirty = self._unsaved = False
            self._signature = disk_signature(self.folder)

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if vectors.shape[1] != self.info.dim:
            raise DimensionMismatch(f"vectors are {vectors.shape[1]}-d; collection '{self.name}' holds "
                                    f"{self.info.dim}-d vectors from '{self.info.encoder}'")
        return vectors

    # ---- searching ----------------------------------------------------------------------------
    def embed(self, text: str | None = None, image: Query | None = None, audio: Query | None = None,
              weights: dict[str, float] | None = None) -> np.ndarray:
        """One query vector from any mix of text, image and audio (weighted sum of unit vectors, renormalised)."""
        parts: dict[str, np.ndarray] = {}
        if text is not None and not text.strip():
            raise BadInput("empty query text")
        if text is not None:
            parts["text"] = self.encoder.encode_text([text])[0]
        if image is not None:
            parts["image"] = image if isinstance(image, np.ndarray) else self.encoder.encode_images([_existing(image)])[0]
        if audio is not None:
            parts["audio"] = audio if isinstance(audio, np.ndarray) else self.encoder.encode_audio([_existing(audio)])[0]
        if not parts:
            raise BadInput("a query needs text, an image or audio")
        weights = weights or {}
        fused = sum(float(weights.get(m, 1.0)) * self._checked(v)[0] for m, v in parts.items())
        norm = float(np.linalg.norm(fused))
        if not np.isfinite(norm) or norm < 1e-6:
            raise BadInput(f"query weights {weights} leave nothing to search with (a zero vector)")
        return l2_normalize(np.atleast_2d(fused))[0]

    def search(self, text: str | None = None, image: Query | None = None, audio: Query | None = None,
               vector: np.ndarray | None = None, k: int = 10, modality: str | Sequence[str] | None = None,
               weights: dict[str, float] | None = None, filters: Filters | None = None, *,
               under: Sequence[str | os.PathLike[str]] | None = None, tags: Sequence[str] | None = None,
               since: datetime | None = None, until: datetime | None = None, all_moments: bool = False,
               **photo) -> list[Hit]:
        """Nearest items to a text / image / audio query (or a fused mix, or a raw ``vector``).

        ``filters`` (:class:`Filters`), or the same as keywords: ``modality`` (what to return: ``image``, ``text``,
        ``audio``, ``any`` or a list; default: a text-only query returns images and audio, other queries any
        modality), ``under`` (path prefixes), ``tags``, ``since``/``until`` (file modification time), and the photo
        keywords ``taken_after``, ``taken_before``, ``camera``, ``near``, ``min_score``, ``sort`` (see :class:`Filters`).
        A video is one hit at its best-matching moment (``Hit.t``), or one hit per moment with ``all_moments``.
        """
        f = Filters.make(filters, modality=modality, under=under, tags=tags, since=since, until=until, **photo)
        q = vector if vector is not None else self.embed(text, image, audio, weights)
        text_only = vector is None and image is None and audio is None
        return self.search_vectors(np.atleast_2d(q), k, f, text_only=text_only, all_moments=all_moments)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, modality: str | Sequence[str] | None = None,
                    filters: Filters | None = None, *, under: Sequence[str | os.PathLike[str]] | None = None,
                    tags: Sequence[str] | None = None, since: datetime | None = None,
                    until: datetime | None = None, all_moments: bool = False, **photo) -> list[list[Hit]]:
        """Run many text queries in one batch (same filters as :meth:`search`)."""
        if any(not str(t).strip() for t in texts):
            raise BadInput("empty query text")
        f = Filters.make(filters, modality=modality, under=under, tags=tags, since=since, until=until, **photo)
        if not texts:
            return []
        return self.search_vectors(self.encoder.encode_text(list(texts)), k, f, text_only=True,
                                   all_moments=all_moments)

    def similar(self, item_id: int, k: int = 10, filters: Filters | None = None) -> list[Hit]:
        """"More like this": the nearest items to a stored item's vector, the item itself left out."""
        row = self.item(item_id)
        if row.modality == "video" and row.parent_id is None:
            raise BadInput(f"item {item_id} is a video file: ask for more like one of its moments (a hit's id)")
        vector = self.vectors([row.id])
        hits = self.search_vectors(vector, k + 1, filters or Filters())[0]
        others = [h for h in hits if h.id != item_id][:k]
        return [replace(h, rank=i + 1) for i, h in enumerate(others)]

    def search_vectors(self, queries: np.ndarray, k: int = 10, filters: Filters | None = None, *,
                       text_only: bool = False, all_moments: bool = False) -> list[list[Hit]]:
        """Search with query vectors; filters become an id allow-list inside FAISS (k hits whenever k match).
        Moments of one video collapse into its best one unless ``all_moments`` (the search widens to keep k hits)."""
        queries = self._checked(queries)
        filters = filters or Filters()
        allowed = self._allowed(filters, default_modalities(filters, text_only, self._modality))
        if allowed is not None and len(allowed) == 0:
            return [[] for _ in queries]
        collapse = not all_moments and bool(self._modality.counts().get("video"))
        fetch = min(k * 4, max(k, self.index.ntotal)) if collapse else k
        while True:
            scores, ids = self.index.search(queries, fetch, allowed=allowed)
            rows = self.store.get(np.unique(ids[ids >= 0]).tolist())
            out = [_hits(s, i, rows, k, collapse) for s, i in zip(scores, ids)]
            if not collapse or fetch >= self.index.ntotal or all(len(h) >= k for h in out):
                cutoff = filters.cutoff(self.info.encoder)
                return [ranked(h, rows, cutoff, filters.sort) for h in out]
            fetch = min(fetch * 4, self.index.ntotal)

    def _allowed(self, filters: Filters, modalities: list[str] | None) -> "IdSet | None":
        """The ids a search may return (None: all). Modality alone uses the per-handle cache: no SQL per query."""
        from ..index import IdSet

        if filters.narrows_rows:
            ids = self.store.ids_where(**filters.store_args(modalities))
            return None if ids.size == self.index.ntotal else IdSet(ids)
        present = self._modality.present()
        if modalities is None or set(present) <= set(modalities):
            return None
        return self._modality.idset([m for m in modalities if m in present])

    def dupes(self, threshold: float | None = None, max_hash: int | None = None,
              under: Sequence[str | os.PathLike[str]] | None = None) -> list["DupeGroup"]:
        """Groups of duplicate photos (exact and near), each with a suggested keeper; see ``engine/dupes.py``."""
        from .dupes import DEFAULT_MAX_HASH, DEFAULT_THRESHOLD, find_dupes

        paths = [str(Path(p).expanduser().resolve()) for p in under or ()]
        return find_dupes(self, DEFAULT_THRESHOLD if threshold is None else threshold,
                          DEFAULT_MAX_HASH if max_hash is None else max_hash, paths or None)

    # ---- reading items ------------------------------------------------------------------------
    def item(self, item_id: int) -> "ItemRow":
        """The stored metadata of one item; MissingItem if there is none."""
        row = self.store.get([int(item_id)]).get(int(item_id))
        if row is None:
            raise MissingItem(f"no item {item_id} in collection '{self.name}'")
        return row

    def file_of(self, item_id: int) -> Path:
        """The file of an item (a caption's: its image), only if it is still on disk; MissingItem otherwise."""
        path = Path(self.item(item_id).path)
        if not path.is_file():
            raise MissingItem(f"item {item_id} of collection '{self.name}': {path} is gone")
        return path

    def moment_frame(self, item_id: int):
        """The video frame (a PIL image) at a video moment's ``t`` (its key frame); BadInput for other items."""
        from ..media_video import frame_at

        row = self.item(item_id)
        if row.modality != "video" or row.t is None:
            raise BadInput(f"item {item_id} is not a video moment")
        return frame_at(str(self.file_of(item_id)), row.t)

    def image_of(self, item_id: int, size: int | None = None):
        """An image item's picture as upright RGB (PIL), decoded like for embedding (HEIC, RAW, 16-bit, EXIF
        orientation); ``size``: a JPEG may be decoded at a reduced scale down to about this size."""
        from ..media import load_image

        return load_image(self.file_of(item_id), draft=size)

    def items(self, filters: Filters | None = None, *, source: str | None = None) -> list["ItemRow"]:
        """Stored items matching ``filters`` (``source``: captions from this CSV), ordered by id."""
        f = filters or Filters()
        return self.store.rows(source=source, **f.store_args(f.modalities))

    def tags_of(self, item_ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """Tags per item id, best score first."""
        return self.store.tags_of(item_ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids``, in order."""
        return self.store.vectors(ids, self.info.dim)

    def similarity(self, rows: Sequence[Query], cols: Sequence[Query]) -> np.ndarray:
        """Cosine similarity matrix between two sets; each entry is a text, a file path or a vector."""
        return cosine_matrix(self.encoder, rows, cols)

    def stats(self) -> dict:
        """collection.json contents plus live counts and file sizes."""
        data = self.info.to_dict()
        data.update(path=str(self.folder), items=self.index.ntotal, counts=self.store.counts(),
                    min_score_default=default_min_score(self.info.encoder),
                    bytes={f: (self.folder / f).stat().st_size for f in (VECTORS_FILE, META_FILE)
                           if (self.folder / f).exists()})
        return data


class _Writer:
    """The collection as an ``indexer.ItemWriter``: SQLite, FAISS and the modality cache change together."""

    def __init__(self, col: Collection):
        self.col = col

    def write(self, records: Sequence["ItemRecord"], vectors: np.ndarray) -> list[int]:
        """Store rows + vectors (one transaction) and put the vectors in the index under the row ids."""
        vectors = self.col._checked(vectors)
        self.col._mark_dirty()
        ids = self.col.store.upsert(records, vectors)
        self.col.index.add(np.asarray(ids, np.int64), vectors)
        self.col._modality.added(ids, [r.modality for r in records])
        return ids

    def delete(self, ids: Sequence[int]) -> list[int]:
        self.col._mark_dirty()
        removed = self.col.store.delete(ids)
        self.col.index.remove(np.asarray(removed, np.int64))
        self.col._modality.removed(removed)
        return removed

    def touch(self, ids_mtimes: Iterable[tuple[int, int]]) -> None:
        self.col.store.touch(ids_mtimes)

    def annotate(self, fields_by_id: dict[int, dict]) -> None:
        self.col.store.annotate(fields_by_id)

    def write_group(self, parent: "ItemRecord", children: Sequence["ItemRecord"], vectors: np.ndarray) -> list[int]:
        """Store a video (no vector) with its moments, replacing its old ones, and index the moments' vectors."""
        vectors = self.col._checked(vectors) if len(vectors) else vectors
        self.col._mark_dirty()
        parent_id, ids, removed = self.col.store.replace_group(parent, children, vectors)
        self.col.index.remove(np.asarray(removed, np.int64))
        self.col._modality.removed(removed)
        if ids:
            self.col.index.add(np.asarray(ids, np.int64), vectors)
        self.col._modality.added([parent_id, *ids], [parent.modality] + [c.modality for c in children])
        return ids


def _hits(scores: np.ndarray, ids: np.ndarray, rows: dict[int, "ItemRow"], k: int, collapse: bool) -> list[Hit]:
    """Ranked hits (at most ``k``); with ``collapse``, only the best moment of each video."""
    hits: list[Hit] = []
    videos: set[int] = set()
    for score, item_id in zip(scores, ids):
        row = rows.get(int(item_id))
        if row is None or len(hits) >= k:
            continue
        if collapse and row.t is not None and row.parent_id is not None:
            if row.parent_id in videos:
                continue
            videos.add(row.parent_id)
        hits.append(Hit(len(hits) + 1, float(score), row.path, row.modality, row.text, row.id, row.t, row.taken))
    return hits


def collection_folder(home: str | os.PathLike[str] | None, name: str) -> Path:
    """``<home>/<name>``; BadInput for a name that is not a plain folder name or a home that is not a folder."""
    if (not isinstance(name, str) or not name.strip() or name.startswith(".") or "\0" in name
            or any(sep in name for sep in {"/", "\\", os.sep})):
        raise BadInput(f"collection name {name!r}: use a plain name (letters, digits, '-', '_'), not a path")
    root = Path(home or default_home()).expanduser()
    if root.exists() and not root.is_dir():
        raise BadInput(f"{root}: the home folder (--home / XSEARCH_HOME) is a file, not a folder")
    return root / name


def _check_index_choice(request: str, target_recall: float, dim: int | None) -> None:
    """BadInput for an index choice that could never be built, before anything is stored."""
    from ..index import check_request

    if not 0 < float(target_recall) <= 1:
        raise BadInput(f"target recall {target_recall} must be in (0, 1]")
    check_request(request, dim or 8)


def disk_signature(folder: Path) -> tuple:
    """(mtime, size, inode) of each file a writer changes: what :meth:`Collection.refresh` compares."""
    out = []
    for name in (INFO_FILE, VECTORS_FILE, META_FILE, META_FILE + "-wal"):
        try:
            st = os.stat(folder / name)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def checksum_problem(path: Path, meta: dict[str, str], full: bool = False) -> str | None:
    """Why vectors.faiss does not match the size/CRC recorded at its last save (None: it does, or none recorded).

    Files up to CRC_AT_OPEN bytes (or any, with ``full``) are checksummed; bigger ones only when their mtime
    differs from the recorded one (``xsearch verify`` always checksums)."""
    if CRC_KEY not in meta:
        return None
    st = path.stat()
    damaged = f"{path.name} does not match the checksum recorded at its last save (damaged)"
    if str(st.st_size) != meta.get(SIZE_KEY):
        return damaged
    if not full and st.st_size > CRC_AT_OPEN and str(st.st_mtime_ns) == meta.get(MTIME_KEY):
        return None
    return damaged if file_crc(path) != meta[CRC_KEY] else None


def _check_encoder(info: CollectionInfo, encoder: str | Encoder | None) -> Encoder | None:
    if encoder is None:
        return None
    enc_id = encoder.id if isinstance(encoder, Encoder) else encoder
    if enc_id != info.encoder:
        enc = encoder if isinstance(encoder, Encoder) else create(encoder)
        if enc.id != info.encoder:
            raise EncoderMismatch(f"collection '{info.name}' was built with encoder '{info.encoder}' ({info.dim}-d), "
                                  f"not '{enc.id}': query it without --encoder, or index into a new --collection")
        return enc
    return encoder if isinstance(encoder, Encoder) else None


def _existing(path: str | os.PathLike[str]) -> str:
    if not Path(path).is_file():
        raise BadInput(f"{path}: no such file")
    return str(path)
