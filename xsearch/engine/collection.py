"""Collection: ties an encoder, a FAISS index and the SQLite store together. Only here are FAISS ids mapped to rows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ingest
from .config import (DEFAULT_COLLECTION, DEFAULT_ENCODER, INFO_FILE, META_FILE, VECTORS_FILE, CollectionInfo,
                     IndexSpec, default_home)
from .encoders import Encoder, create, l2_normalize
from .errors import BadInput, DimensionMismatch, EncoderMismatch, MissingCollection
from .index import VectorIndex, build_index, outgrown
from .media import modality_of
from .store import ItemRecord, ItemRow, Store

Query = str | os.PathLike[str] | np.ndarray
TAG_TEMPLATES = {"image": "a photo of a {}.", "audio": "the sound of {}.", "text": "{}"}  # zero-shot prompt per modality


@dataclass(frozen=True)
class Hit:
    """One search result. ``path`` is the file (for a caption, its image); ``text`` the caption or text snippet."""

    rank: int
    score: float
    path: str
    modality: str
    text: str | None
    id: int

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": round(self.score, 6), "path": self.path, "modality": self.modality,
                "text": self.text}


class Collection:
    """A searchable collection stored in ``<home>/<name>/`` (collection.json, vectors.faiss, meta.sqlite).

    >>> col = Collection.open("indexes", "photos", create=True)   # doctest: +SKIP
    >>> col.add(["./photos"]); col.search(text="a dog on a beach", k=5)   # doctest: +SKIP
    """

    def __init__(self, folder: Path, info: CollectionInfo, store: Store, index: VectorIndex,
                 encoder: Encoder | None = None):
        self.folder, self.info, self.store, self.index = folder, info, store, index
        self._encoder = encoder

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, name: str = DEFAULT_COLLECTION,
             encoder: str | Encoder | None = None, create: bool = False, index: str = "auto",
             target_recall: float = 0.95, memory_bytes: int | None = None,
             read_only: bool = False) -> "Collection":
        """Open collection ``name`` under ``home``; with ``create=True`` make it (with ``encoder``) if missing.

        ``index`` (``auto``, ``flat``, ``ivf``, ``ivfpq``, ``hnsw``, ... or a FAISS factory string), ``target_recall``
        and ``memory_bytes`` choose the FAISS index of a new collection. ``read_only=True`` memory-maps the FAISS
        file where FAISS can (fast opens of big indexes for querying; adding/removing then raises). Raises
        EncoderMismatch if ``encoder`` differs from the one the collection was built with.
        """
        folder = Path(home or default_home()) / name
        if not (folder / INFO_FILE).exists():
            if not create:
                raise MissingCollection(f"no collection '{name}' in {folder.parent} (run `xsearch index PATH` first, "
                                        f"or pass --home/--collection)")
            return cls._create(folder, name, encoder or DEFAULT_ENCODER,
                               dict(index_request=index, target_recall=target_recall, memory_bytes=memory_bytes))
        info = CollectionInfo.load(folder)
        enc = _check_encoder(info, encoder)
        col = cls(folder, info, Store(folder / META_FILE), VectorIndex(info.dim, info.index), enc)
        col._load_index(mmap=read_only)
        return col

    @classmethod
    def _create(cls, folder: Path, name: str, encoder: str | Encoder, index_options: dict) -> "Collection":
        enc = encoder if isinstance(encoder, Encoder) else create(encoder)
        folder.mkdir(parents=True, exist_ok=True)
        info = CollectionInfo(name=name, encoder=enc.id, dim=enc.dim, index=IndexSpec(), **index_options)
        store = Store(folder / META_FILE)
        store.set_meta("encoder", enc.id)
        col = cls(folder, info, store, VectorIndex(enc.dim, info.index), enc)
        col.save()
        return col

    def _load_index(self, mmap: bool = False) -> None:
        """Load vectors.faiss; rebuild it from stored vectors if missing, stale (interrupted run) or inconsistent."""
        path = self.folder / VECTORS_FILE
        fresh = path.exists() and self.store.get_meta("dirty") != "1"
        if fresh:
            try:
                self.index = VectorIndex.load(path, self.info.dim, self.info.index, mmap=mmap)
                fresh = self.index.ntotal == self.store.count()
            except BadInput:
                fresh = False
        if not fresh:
            self.rebuild_index()
            if mmap:
                self.index = VectorIndex.load(path, self.info.dim, self.info.index, mmap=True)

    def rebuild_index(self, request: str | None = None, target_recall: float | None = None,
                      memory_bytes: int | None = None) -> None:
        """Build a new FAISS index from the vectors kept in SQLite (the store is the source of truth).

        ``request`` etc. change the collection's index choice (``xsearch reindex --index ...``); by default the
        recorded choice is applied again at the current size, so an ``auto`` collection that grew gets a bigger index.
        """
        changes = {k: v for k, v in dict(index_request=request, target_recall=target_recall,
                                         memory_bytes=memory_bytes).items() if v is not None}
        self.info = self.info.touched(**changes)
        pairs = list(self.store.iter_vectors(self.info.dim))
        ids = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        vectors = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros((0, self.info.dim), np.float32)
        self.index = build_index(vectors, ids, self.info.index_request, self.info.target_recall,
                                 self.info.memory_bytes)
        self.save()

    def index_outgrown(self) -> bool:
        """True when the index was chosen for a different size than the collection has now (see ``reindex``)."""
        return outgrown(self.index.spec, self.index.ntotal, self.info.dim, self.info.memory_bytes)

    def _settle_index(self) -> None:
        """After adding: build the requested index the first time there is data for it (later growth: ``reindex``)."""
        built_for = self.index.spec.params.get("request")
        if self.index.ntotal and (built_for != self.info.index_request or
                                  (self.index.spec.kind == "flat" and self.index_outgrown())):
            self.rebuild_index()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = create(self.info.encoder)
        return self._encoder

    @property
    def name(self) -> str:
        return self.info.name

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
            captions: str | os.PathLike[str] | None = None, progress: ingest.ProgressFn | None = None,
            workers: int | None = None, batch_size: int = 32) -> ingest.IndexReport:
        """Index files/folders incrementally (new or changed files only; deleted files dropped), then captions.

        Unreadable files are skipped and listed in the report; nothing already indexed is lost.
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self._writable()
        try:
            report = ingest.add_files(self, paths, progress, workers, batch_size) if paths else ingest.IndexReport()
            if captions is not None:
                ingest.add_captions(self, captions, report)
            self._settle_index()
            report.outgrown = self.index_outgrown()
        finally:
            self.save()
        return report

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Drop files (or everything under folders) from the collection; return how many items went."""
        self._writable()
        under = [str(Path(p).expanduser().resolve()) for p in paths]
        ids = self.store.ids_where(under=under)
        removed = self._delete_ids(ids.tolist()) if ids.size else []
        self.save()
        return len(removed)

    def _write(self, records: Sequence[ItemRecord], vectors: np.ndarray) -> list[int]:
        """Store rows + vectors (one transaction) and put the vectors in the index under the row ids."""
        vectors = self._checked(vectors)
        self._mark_dirty()
        ids = self.store.upsert(records, vectors)
        self.index.add(np.asarray(ids, np.int64), vectors)
        return ids

    def _delete_ids(self, ids: Sequence[int]) -> list[int]:
        self._mark_dirty()
        removed = self.store.delete(ids)
        self.index.remove(np.asarray(removed, np.int64))
        return removed

    def _mark_dirty(self) -> None:
        if not getattr(self, "_dirty", False):
            self.store.set_meta("dirty", "1")
            self._dirty = True

    def _writable(self) -> None:
        if self.index.read_only:
            raise BadInput(f"collection '{self.name}' was opened read-only (memory-mapped); open it without "
                           "read_only to change it")

    def save(self) -> None:
        """Write vectors.faiss and collection.json atomically and mark the store clean."""
        self.index.save(self.folder / VECTORS_FILE)
        self.info = self.info.touched(counts=self.store.counts(), index=self.index.spec)
        self.info.save(self.folder)
        self.store.set_meta("dirty", "0")
        self._dirty = False

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if vectors.shape[1] != self.info.dim:
            raise DimensionMismatch(f"vectors are {vectors.shape[1]}-d; collection '{self.name}' holds "
                                    f"{self.info.dim}-d vectors from '{self.info.encoder}'")
        return vectors

    # ---- reading ------------------------------------------------------------------------------
    def embed(self, text: str | None = None, image: Query | None = None, audio: Query | None = None,
              weights: dict[str, float] | None = None) -> np.ndarray:
        """One query vector from any mix of text, image and audio (weighted sum of unit vectors, renormalised)."""
        parts: dict[str, np.ndarray] = {}
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
        return l2_normalize(np.atleast_2d(fused))[0]

    def search(self, text: str | None = None, image: Query | None = None, audio: Query | None = None,
               vector: np.ndarray | None = None, k: int = 10, modality: str | Sequence[str] | None = None,
               weights: dict[str, float] | None = None, **filters) -> list[Hit]:
        """Nearest items to a text / image / audio query (or a fused mix, or a raw ``vector``).

        ``modality``: what to return (``image``, ``text``, ``audio``, ``any`` or a list). Default: a text-only query
        returns images and audio (text→image), other queries return any modality. ``filters``: ``under`` (path
        prefixes), ``since``/``until`` (file modification time, datetime), ``tags``.
        """
        q = vector if vector is not None else self.embed(text, image, audio, weights)
        mods = self._modalities(modality, text_only=vector is None and image is None and audio is None)
        return self.search_vectors(np.atleast_2d(q), k, mods, **filters)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, modality: str | Sequence[str] | None = None,
                    **filters) -> list[list[Hit]]:
        """Run many text queries in one batch."""
        if not texts:
            return []
        q = self.encoder.encode_text(list(texts))
        return self.search_vectors(q, k, self._modalities(modality, text_only=True), **filters)

    def search_vectors(self, queries: np.ndarray, k: int = 10, modalities: Sequence[str] | None = None,
                       under: Sequence[str] | None = None, since: datetime | None = None,
                       until: datetime | None = None, tags: Sequence[str] | None = None) -> list[list[Hit]]:
        """Search with query vectors; filters are turned into an id allow-list for FAISS."""
        queries = self._checked(queries)
        under = [str(Path(p).expanduser().resolve()) for p in under] if under else None
        allowed = None
        if modalities or under or since or until or tags:
            allowed = self.store.ids_where(modalities=modalities, under=under, since=since, until=until, tags=tags)
            if allowed.size == 0:
                return [[] for _ in queries]
            if allowed.size == self.index.ntotal:
                allowed = None
        scores, ids = self.index.search(queries, k, allowed=allowed)
        rows = self.store.get(np.unique(ids[ids >= 0]).tolist())
        return [self._hits(s, i, rows) for s, i in zip(scores, ids)]

    @staticmethod
    def _hits(scores: np.ndarray, ids: np.ndarray, rows: dict[int, ItemRow]) -> list[Hit]:
        hits = []
        for score, item_id in zip(scores, ids):
            row = rows.get(int(item_id))
            if row is not None:
                hits.append(Hit(len(hits) + 1, float(score), row.path, row.modality, row.text, row.id))
        return hits

    def _modalities(self, modality: str | Sequence[str] | None, text_only: bool) -> list[str] | None:
        if modality is None:
            if not text_only:
                return None
            present = [m for m, n in self.store.counts().items() if n and m != "text"]
            return present or None
        mods = [modality] if isinstance(modality, str) else list(modality)
        if "any" in mods:
            return None
        bad = [m for m in mods if m not in ("image", "text", "audio")]
        if bad:
            raise BadInput(f"unknown modality '{bad[0]}' (use image, text, audio or any)")
        return mods

    def items(self, **filters) -> list[ItemRow]:
        """Stored items (see Store.rows for filters)."""
        return self.store.rows(**filters)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.store.vectors(ids, self.info.dim)

    def similarity(self, rows: Sequence[Query], cols: Sequence[Query]) -> np.ndarray:
        """Cosine similarity matrix between two sets; each entry is a text, a file path or a vector."""
        return cosine_matrix(self.encoder, rows, cols)

    def tag(self, labels: Sequence[str], k: int = 3, template: str | None = None,
            modality: str = "image") -> dict[str, list[tuple[str, float]]]:
        """Zero-shot tagging: the ``k`` best labels for every ``modality`` item, stored as tags; returns path -> tags.

        ``template`` defaults per modality: "a photo of a {}." (image), "the sound of {}." (audio), "{}" (text).
        """
        if not labels:
            raise BadInput("zero-shot tagging needs at least one label")
        if modality not in TAG_TEMPLATES:
            raise BadInput(f"cannot tag modality '{modality}' (use image, audio or text)")
        template = template or TAG_TEMPLATES[modality]
        label_vecs = self.encoder.encode_text([template.format(label) for label in labels])
        rows = self.store.rows(modalities=[modality])
        vecs = self.vectors([r.id for r in rows])
        sims = vecs @ label_vecs.T
        top = np.argsort(-sims, axis=1)[:, :k]
        tags = {r.id: [(labels[j], float(sims[i, j])) for j in top[i]] for i, r in enumerate(rows)}
        self.store.set_tags(tags)
        return {r.path: tags[r.id] for r in rows}

    def stats(self) -> dict:
        """collection.json contents plus live counts and file sizes."""
        data = self.info.to_dict()
        data.update(path=str(self.folder), items=self.index.ntotal, counts=self.store.counts(),
                    bytes={f: (self.folder / f).stat().st_size for f in (VECTORS_FILE, META_FILE)
                           if (self.folder / f).exists()})
        return data


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
    for kind, idx in groups.items():
        values = [items[i] for i in idx]
        if kind == "image":
            out[idx] = encoder.encode_images([str(v) for v in values])
        elif kind == "audio":
            out[idx] = encoder.encode_audio([str(v) for v in values])
        elif kind == "text":
            from .media import load_text

            out[idx] = encoder.encode_text([load_text(v) for v in values])
        else:
            out[idx] = encoder.encode_text([str(v) for v in values])
    return out


def cosine_matrix(encoder: Encoder, rows: Sequence[Query], cols: Sequence[Query]) -> np.ndarray:
    """Cosine similarities between two mixed lists (see :func:`embed_many`)."""
    return embed_many(encoder, rows) @ embed_many(encoder, cols).T

