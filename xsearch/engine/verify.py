"""``xsearch verify``: check a collection end to end, and (``repair=True``) rebuild what can be rebuilt.

Checks: collection.json readable; meta.sqlite present and ``PRAGMA integrity_check`` clean; schema, encoder and
fingerprint the same in both; no NaN/inf stored vectors; vectors.faiss matching its recorded checksum, readable, with
exactly the store's ids, and a sample of its vectors equal to the stored ones (reconstructed for exact indexes,
found by searching for lossy ones); with ``files``, every indexed file still present and unchanged.

Repair (under the writer lock) works from the source of truth: SQLite rows recovered page by page (files of lost
rows re-embedded), NaN vectors re-embedded, collection.json rewritten from SQLite, vectors.faiss rebuilt from the
stored vectors. It never deletes data it cannot rebuild; damaged originals are kept as ``*.damaged-<time>``.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import INFO_FILE, META_FILE, VECTORS_FILE, CollectionInfo
from ..errors import BadInput, MissingCollection, XSearchWarning
from ..media import FileInfo, file_hash
from .collection import CRC_KEY, Collection, checksum_problem, collection_folder
from .locking import Say, WriterLock, owner_of, pid_alive, temp_files
from .versioning import FINGERPRINT_KEY

SAMPLE = 256  # stored vectors compared with the FAISS index
MAX_LINES = 20  # problems of one kind listed before "... and N more"


@dataclass
class VerifyReport:
    """Problems (damage: exit 1), notes (an interrupted write the next writer finishes) and repairs done."""

    collection: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"collection": self.collection, "ok": self.ok, "problems": self.problems, "notes": self.notes,
                "repaired": self.repaired, "checked": self.checked}


def verify_collection(home: str | os.PathLike[str] | None, name: str, files: bool = False, repair: bool = False,
           sample: int = SAMPLE, wait: bool | float = False, say: Say | None = None) -> VerifyReport:
    """Check collection ``name`` (read-only: writes nothing); with ``repair``, fix what can be fixed, then check again."""
    folder = collection_folder(home, name)
    if not folder.is_dir():
        raise MissingCollection(f"no collection '{name}' in {folder.parent}")
    if not repair:
        return _check(folder, name, files, sample)
    with WriterLock(folder, name, wait, say) as lock:
        done = _repair(folder, name, _check(folder, name, files, sample), lock)
    report = _check(folder, name, files, sample)
    report.repaired = done
    return report


# ---- checking ---------------------------------------------------------------------------------------
def _check(folder: Path, name: str, files: bool, sample: int) -> VerifyReport:
    from ..store import Store
    from ..store.recover import integrity_problems

    report = VerifyReport(name)
    info = _info(folder, report)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        report.problems.append(f"{meta_path}: missing (the collection's metadata and stored vectors); restore it "
                               "from a backup: it cannot be rebuilt")
        return report
    damage = integrity_problems(meta_path)
    if damage:
        report.problems += [f"{folder / d}" for d in damage]
        return report
    store = Store(meta_path, read_only=True)
    try:
        meta = store.metas()
        if info is not None:
            _check_consistency(info, meta, store, report)
        dim = info.dim if info is not None else store.vector_dim()
        ids = _check_vectors(store, dim, report)
        _check_writes(folder, meta, store, report)
        if info is not None and meta.get("dirty") != "1":
            _check_faiss(folder, info, meta, store, ids, sample, report)
        if files:
            _check_files(store, report)
    finally:
        store.close()
    return report


def _info(folder: Path, report: VerifyReport) -> CollectionInfo | None:
    try:
        return CollectionInfo.load(folder)
    except (BadInput, MissingCollection) as exc:
        report.problems.append(str(exc))
        return None


def _check_consistency(info: CollectionInfo, meta: dict, store, report: VerifyReport) -> None:
    if meta.get("encoder") not in (None, info.encoder):
        report.problems.append(f"{INFO_FILE} says encoder '{info.encoder}', {META_FILE} '{meta['encoder']}'")
    if meta.get(FINGERPRINT_KEY, info.encoder_fingerprint) != info.encoder_fingerprint:
        report.problems.append(f"{INFO_FILE} says encoder version '{info.encoder_fingerprint}', {META_FILE} "
                               f"'{meta[FINGERPRINT_KEY]}'")


def _check_vectors(store, dim: int, report: VerifyReport) -> np.ndarray:
    """Every stored vector: the right length, finite, non-zero. Returns all ids."""
    bad: list[str] = []
    all_ids = []
    try:
        for ids, vecs in store.iter_vectors(dim):
            all_ids.append(ids)
            wrong = ~np.isfinite(vecs).all(axis=1) | (np.abs(vecs).sum(axis=1) == 0)
            for item_id in ids[wrong]:
                bad.append(int(item_id))
    except ValueError:
        report.problems.append(f"{META_FILE}: stored vectors are not {dim}-d")
        return np.zeros(0, np.int64)
    rows = store.get(bad[:MAX_LINES])
    for item_id in bad[:MAX_LINES]:
        path = rows[item_id].path if item_id in rows else "?"
        report.problems.append(f"item {item_id} ({path}): stored vector is NaN, infinite or zero")
    _more(report, len(bad))
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
    report.checked["items"] = int(len(ids))
    return ids


def _check_writes(folder: Path, meta: dict, store, report: VerifyReport) -> None:
    """Traces of an interrupted (or running) write: notes, not damage."""
    owner = owner_of(folder)
    running = owner is not None and pid_alive(owner["pid"]) and owner["pid"] != os.getpid()
    if meta.get("dirty") == "1":
        who = f"a write by PID {owner['pid']} is running" if running else "a write was interrupted"
        report.notes.append(f"{VECTORS_FILE} is behind {META_FILE} ({who}); readers search an index rebuilt in "
                            "memory; the next write or `xsearch verify --repair` saves it")
    leftovers = temp_files(folder)
    if leftovers and not running:
        report.notes.append(f"{len(leftovers)} temporary files of an interrupted write; the next writer removes them")
    staged = store.staged_count()
    if staged:
        report.notes.append(f"{staged} re-embedded vectors staged by an interrupted `reindex --reembed`; run it "
                            "again to finish")


def _check_faiss(folder: Path, info: CollectionInfo, meta: dict, store, ids: np.ndarray, sample: int,
                 report: VerifyReport) -> None:
    from ..index import VectorIndex

    path = folder / VECTORS_FILE
    if not path.is_file():
        report.problems.append(f"{path}: missing")
        return
    damaged = checksum_problem(path, meta, full=True)
    if damaged:
        report.problems.append(f"{folder / damaged}")
        return
    try:
        index = VectorIndex.load(path, info.dim, info.index, mmap=True)
    except BadInput as exc:
        report.problems.append(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - FAISS may fail in its own ways on a damaged file
        report.problems.append(f"{path}: unreadable FAISS index ({type(exc).__name__})")
        return
    stored = index.ids()
    if len(stored) != len(ids) or not np.array_equal(np.sort(stored), np.sort(ids)):
        missing, extra = np.setdiff1d(ids, stored), np.setdiff1d(stored, ids)
        report.problems.append(f"{path}: {index.ntotal} vectors for {len(ids)} items ({len(missing)} items "
                               f"missing from it, {len(extra)} ids unknown to {META_FILE})")
        return
    if CRC_KEY not in meta:
        report.notes.append(f"{VECTORS_FILE} has no recorded checksum (saved by an older xsearch)")
    _check_sample(index, store, info.dim, ids, sample, report)


def _check_sample(index, store, dim: int, ids: np.ndarray, sample: int, report: VerifyReport) -> None:
    """A sample of FAISS vectors equals the stored ones: reconstructed (exact indexes) or found by search (lossy)."""
    if not len(ids) or sample <= 0:
        return
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False))
    want = store.vectors(pick.tolist(), dim)
    exact = index.spec.factory.replace("IDMap2,", "").split(",")[-1] == "Flat" and "PQ" not in index.spec.factory
    if exact and index.layout != "ivf":
        got = index.reconstruct(pick)
        wrong = ~np.isclose(got, want, atol=1e-5).all(axis=1)
    else:
        _, found = index.search(want, 10)
        wrong = ~(found == pick[:, None]).any(axis=1)
    report.checked["sampled"] = int(len(pick))
    if wrong.any():
        report.problems.append(f"{VECTORS_FILE}: {int(wrong.sum())} of {len(pick)} sampled vectors differ from "
                               f"{META_FILE} (e.g. item {int(pick[wrong][0])})")


def _check_files(store, report: VerifyReport) -> None:
    """Every indexed file is still there with the size/mtime (else sha256) it was indexed with."""
    bad = []
    rows = [r for r in store.rows() if r.parent_id is None and r.source is None]
    for r in rows:
        try:
            st = os.stat(r.path)
        except OSError:
            bad.append(f"{r.path}: missing (indexed file is gone; `xsearch index` drops it)")
            continue
        if st.st_size == r.size and st.st_mtime_ns == r.mtime_ns:
            continue
        try:
            same = file_hash(r.path) == r.sha256
        except OSError as exc:
            bad.append(f"{r.path}: unreadable ({exc.strerror or exc})")
            continue
        if not same:
            bad.append(f"{r.path}: changed since it was indexed (run `xsearch index` on it)")
    report.checked["files"] = len(rows)
    report.problems += bad[:MAX_LINES]
    _more(report, len(bad))


def _more(report: VerifyReport, n: int) -> None:
    if n > MAX_LINES:
        report.problems.append(f"... and {n - MAX_LINES} more like these")


# ---- repairing --------------------------------------------------------------------------------------
def _repair(folder: Path, name: str, found: VerifyReport, lock: WriterLock) -> list[str]:
    """Fix what ``found`` lists, from the source of truth, holding ``lock``; returns one line per repair."""
    from ..store.recover import integrity_problems, recover

    done: list[str] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        return done  # nothing to rebuild from: never touch vectors.faiss
    info = _info(folder, VerifyReport(name))
    lost: dict[int, str] = {}
    placeholders: list[int] = []
    if integrity_problems(meta_path):
        rec = recover(meta_path, stamp, info.dim if info else _dim_guess(folder))
        lost, placeholders = rec.lost_items, rec.placeholders
        done.append(f"{META_FILE}: recovered {rec.copied.get('items', 0)} items from the damaged file (kept as "
                    f"{rec.damaged_copy.name}); {len(lost)} items lost, {len(placeholders)} of them files to "
                    "re-embed")
    if info is None:
        _rewrite_info(folder, name, stamp, done)
    _keep(folder / VECTORS_FILE, stamp, found, done)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XSearchWarning)
        col = Collection.open(folder.parent, name)  # its own lock is busy (ours): a stale index stays in memory
    col.lock = lock
    try:
        col.store.writing(True)
        _reembed_lost(col, placeholders, lost, done)
        _reembed_bad_vectors(col, done)
        fingerprint = col.store.get_meta(FINGERPRINT_KEY)
        if fingerprint is not None and fingerprint != col.info.encoder_fingerprint:
            col.info = col.info.touched(encoder_fingerprint=fingerprint)
            done.append(f"{INFO_FILE}: encoder version set to {META_FILE}'s")
        col.rebuild_index()
        done.append(f"{VECTORS_FILE}: rebuilt from the {len(col)} vectors stored in {META_FILE}")
        col.store.writing(False)
    finally:
        col.close()
    return done


def _dim_guess(folder: Path) -> int:
    """The dimension of the collection's encoder (collection.json is unreadable too)."""
    from ..encoders import create
    from ..store import Store

    store = Store(folder / META_FILE, read_only=True)
    try:
        enc_id = store.get_meta("encoder")
    except BadInput:
        enc_id = None
    finally:
        store.close()
    if not enc_id:
        raise BadInput(f"{folder}: neither {INFO_FILE} nor {META_FILE} says which encoder made the vectors")
    return create(enc_id).dim


def _rewrite_info(folder: Path, name: str, stamp: str, done: list[str]) -> CollectionInfo:
    """collection.json from what meta.sqlite knows (encoder, version, dimension of the stored vectors)."""
    from ..encoders import create
    from ..store import Store

    store = Store(folder / META_FILE, read_only=True)
    try:
        encoder = store.get_meta("encoder")
        if not encoder:
            raise BadInput(f"{folder / META_FILE}: does not name its encoder; {INFO_FILE} cannot be rebuilt")
        dim = store.vector_dim() or create(encoder).dim
        info = CollectionInfo(name=name, encoder=encoder, dim=dim,
                              encoder_fingerprint=store.get_meta(FINGERPRINT_KEY) or "")
    finally:
        store.close()
    path = folder / INFO_FILE
    if path.exists():
        shutil.copy2(path, folder / f"{INFO_FILE}.damaged-{stamp}")
    info.save(folder)
    done.append(f"{INFO_FILE}: rewritten from {META_FILE}")
    return info


def _keep(path: Path, stamp: str, found: VerifyReport, done: list[str]) -> None:
    """Keep a damaged vectors.faiss beside the rebuilt one."""
    if path.is_file() and any(VECTORS_FILE in p for p in found.problems):
        shutil.copy2(path, path.with_name(f"{path.name}.damaged-{stamp}"))
        done.append(f"{VECTORS_FILE}: damaged file kept as {path.name}.damaged-{stamp}")


def _reembed_lost(col: Collection, placeholders: list[int], lost: dict[int, str], done: list[str]) -> None:
    """Re-embed the files of item rows lost to SQLite damage; rows of files that are gone are dropped (only the
    path was left of them) and reported."""
    from ..media import modality_of

    captions = len(lost) - len(placeholders)
    if captions:
        done.append(f"{captions} captions were lost with the damaged pages: run `xsearch index --captions CSV` again")
    infos, failed = [], {}
    for item_id in placeholders:
        path = lost[item_id]
        try:
            st = os.stat(path)
            modality = modality_of(path)
            if modality is None:
                raise BadInput("not a supported file")
            infos.append(FileInfo(path, modality, st.st_size, st.st_mtime_ns))
        except (OSError, BadInput) as exc:
            failed[path] = f"{path}: {getattr(exc, 'strerror', None) or exc}"
    embedded, failed_embed = _embed(col, infos)
    failed.update(failed_embed)
    gone = [i for i in placeholders if lost[i] in failed]
    if gone:
        col.store.delete(gone)
    done += [f"lost item could not be re-embedded: {reason}" for reason in list(failed.values())[:MAX_LINES]]
    if embedded:
        done.append(f"re-embedded {embedded} files whose rows were lost")


def _reembed_bad_vectors(col: Collection, done: list[str]) -> None:
    """Stored NaN / infinite / zero vectors: re-embed from the file (captions: from their text); kept if it fails."""
    bad: list[int] = []
    for ids, vecs in col.store.iter_vectors(col.info.dim):
        bad += ids[~np.isfinite(vecs).all(axis=1) | (np.abs(vecs).sum(axis=1) == 0)].tolist()
    if not bad:
        return
    rows = list(col.store.get(bad).values())
    files = [r for r in rows if r.parent_id is None and r.source is None]
    texts = [r for r in rows if (r.parent_id is not None or r.source is not None) and r.text]
    infos = [FileInfo(r.path, r.modality, r.size or 0, r.mtime_ns or 0) for r in files if Path(r.path).is_file()]
    failed = {r.path: f"{r.path}: file is gone" for r in files if not Path(r.path).is_file()}
    fixed, failed_embed = _embed(col, infos)
    failed.update(failed_embed)
    if texts:
        from ..store import ItemRecord

        records = [ItemRecord(**{k: getattr(r, k) for k in ItemRecord.__dataclass_fields__}) for r in texts]
        col.store.upsert(records, col.encoder.encode_text([r.text or "" for r in texts]))
        fixed += len(texts)
    done.append(f"re-embedded {fixed} of {len(bad)} items whose stored vector was NaN, infinite or zero")
    done += [f"kept (could not re-embed): {reason}" for reason in list(failed.values())[:MAX_LINES]]


def _embed(col: Collection, infos: list[FileInfo]) -> tuple[int, dict[str, str]]:
    """Embed ``infos`` and store them under their keys (existing rows keep their ids): (count, {path: reason})."""
    from . import indexer

    count, failed = [0], {}

    def on_batch(batch) -> None:
        records = [indexer._record(f, extra) for f, extra in zip(batch.files, batch.extras)]
        col.store.upsert(records, batch.vectors)
        count[0] += len(records)

    def on_error(path: str, reason: str) -> None:
        failed[path] = reason

    if infos:
        indexer.embed_files(col.encoder, infos, on_batch, on_error)
    return count[0], failed
