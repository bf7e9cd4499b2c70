"""Videos in a collection: one item per video file (no vector) and one child item per sampled moment.

Key frames are embedded as images and audio windows as audio (when the encoder handles audio); each moment is a
child item (``parent_id`` = the video, ``t`` = seconds) whose vector goes into FAISS. A changed video replaces all
its children in one transaction. At query time several moments of one video collapse into its best one (``Collection.search_vectors``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..errors import BadInput
from ..media import FileInfo
from ..media_video import Moment, Sampling, VideoInfo, moments

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ItemRecord
    from .batching import Batch

FRAME_BATCH = 16
AUDIO_BATCH = 16


@dataclass
class VideoEmbedding:
    """One video's moments: ``kinds[i]`` ("frame"/"audio") at ``times[i]`` s has ``vectors[i]``; seconds spent."""

    info: VideoInfo
    kinds: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    decode_s: float = 0.0
    embed_s: float = 0.0

    def stacked(self, dim: int) -> np.ndarray:
        return np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)


def embed_video(encoder: Encoder, path: str, sampling: Sampling = Sampling()) -> VideoEmbedding:
    """Stream one video: decode sampled moments and embed them in small batches (bounded memory)."""
    info, stream = moments(path, sampling, audio=encoder.supports("audio"))
    out = VideoEmbedding(info)
    frames: list[Moment] = []
    sounds: list[Moment] = []
    tick = time.perf_counter()
    for m in stream:
        (frames if m.kind == "frame" else sounds).append(m)
        if len(frames) >= FRAME_BATCH or len(sounds) >= AUDIO_BATCH:
            out.decode_s += time.perf_counter() - tick
            _flush(encoder, out, frames, sounds, full_only=True)
            tick = time.perf_counter()
    out.decode_s += time.perf_counter() - tick
    _flush(encoder, out, frames, sounds, full_only=False)
    if not out.kinds:
        raise BadInput(f"{path}: no frames could be decoded from the video")
    return out


def _flush(encoder: Encoder, out: VideoEmbedding, frames: list[Moment], sounds: list[Moment],
           full_only: bool) -> None:
    start = time.perf_counter()
    if frames and (len(frames) >= FRAME_BATCH or not full_only):
        import torch

        batch = torch.stack([encoder.preprocess_image(m.image) for m in frames])
        _take(out, frames, encoder.encode_image_batch(batch))
    if sounds and (len(sounds) >= AUDIO_BATCH or not full_only):
        from ..media_video import AUDIO_RATE

        _take(out, sounds, encoder.encode_audio([(m.audio, AUDIO_RATE) for m in sounds]))
    out.embed_s += time.perf_counter() - start


def _take(out: VideoEmbedding, done: list[Moment], vectors: np.ndarray) -> None:
    out.kinds += [m.kind for m in done]
    out.times += [m.t for m in done]
    out.vectors.append(np.asarray(vectors, np.float32))
    done.clear()


def embed_videos(encoder: Encoder, files: Sequence[FileInfo], on_batch: Callable[["Batch"], None],
                 on_error: Callable[[str, str], None]) -> None:
    """One ``Batch`` per video: the file, one vector per moment, and ``extras[0]["moments"]`` = [(kind, t), ...]."""
    from .batching import Batch

    for f in files:
        try:
            v = embed_video(encoder, f.path)
        except BadInput as exc:
            on_error(f.path, str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the whole run
            on_error(f.path, f"{f.path}: cannot decode video ({type(exc).__name__}: {exc})")
            continue
        extra = {"duration": round(v.info.duration, 3), "width": v.info.width, "height": v.info.height,
                 "moments": list(zip(v.kinds, v.times))}
        on_batch(Batch([f], v.stacked(encoder.dim), [extra]))


def is_video_batch(batch: "Batch") -> bool:
    """True for a batch ``embed_videos`` made (its vectors belong to the moments, not to the file)."""
    return bool(batch.extras) and "moments" in batch.extras[0]


def moment_key(path: str, kind: str, t: float) -> str:
    return f"{path}#{kind}@{t:.3f}"


def is_frame_key(key: str) -> bool:
    """Whether a moment's key (``moment_key``) names a key frame (not an audio window)."""
    return key.rpartition("#")[2].startswith("frame@")


class GroupWriter(Protocol):
    def write_group(self, parent: "ItemRecord", children: Sequence["ItemRecord"], vectors: np.ndarray) -> list[int]: ...


def write_video(writer: GroupWriter, parent: "ItemRecord", moments_: Iterable[tuple[str, float]],
                vectors: np.ndarray) -> list[int]:
    """Store the video item and its moments (replacing any old ones) in one transaction."""
    from ..store import ItemRecord

    children = [ItemRecord(key=moment_key(parent.path, kind, t), path=parent.path, modality="video", t=float(t),
                           sha256=parent.sha256, mtime_ns=parent.mtime_ns)  # the file's time: --since/--until
                for kind, t in moments_]
    return writer.write_group(parent, children, vectors)


# ---- re-embedding ----------------------------------------------------------------------------------
def stage_videos(parents: Sequence[Any], children: Sequence[Any], stage: Callable[..., None],
                 encoder: Encoder, fingerprint: str) -> int:
    """Re-embed videos for ``reindex --reembed``: moments found again keep their ids; a video that cannot be
    decoded is staged as failed with all its moments. Returns how many items were staged with a vector."""
    by_parent: dict[int, dict[str, int]] = {}
    for c in children:
        by_parent.setdefault(c.parent_id, {})[c.key] = c.id
    done = 0
    for p in parents:
        kids = by_parent.get(p.id, {})
        try:
            v = embed_video(encoder, p.path)
        except BadInput as exc:
            stage([p.id, *kids.values()], None, fingerprint, [str(exc)] * (1 + len(kids)))
            continue
        found = {moment_key(p.path, k, t): i for i, (k, t) in enumerate(zip(v.kinds, v.times))}
        vecs = v.stacked(encoder.dim)
        hit = [(cid, found[key]) for key, cid in kids.items() if key in found]
        lost = [cid for key, cid in kids.items() if key not in found]
        if hit:
            stage([c for c, _ in hit], vecs[[i for _, i in hit]], fingerprint)
        if lost:
            stage(lost, None, fingerprint, [f"{p.path}: moment not found again in the video"] * len(lost))
        stage([p.id], np.zeros((1, 0), np.float32), fingerprint)  # last: a staged video has all its moments staged
        done += 1 + len(hit)
    return done
