"""Video decoding with PyAV (the ``video`` extra): a streamed walk over one file that yields sampled *moments*.

A moment is a key frame (an RGB PIL image) or an audio window (a 16 kHz mono float32 waveform), each with its time
``t`` in seconds from the start of the video. Frames are decoded one at a time and dropped unless sampled, audio is
kept only up to one window, so memory stays bounded whatever the length of the video.

Key frames (see :class:`Sampling`): the first frame; a scene change (mean absolute difference of a 32x18 grey
thumbnail against the previous frame above ``scene_threshold``) once at least ``min_gap`` (N = 1 s) has passed since
the last sampled frame; and at least one frame every ``max_gap`` (M = 5 s) when nothing changes. At most
``max_frames`` per video: a long video stretches M to ``duration / (max_frames / 2)`` so periodic frames cover all
of it, and scene changes get the other half of the budget.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

VIDEO_EXTS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
EXTRA_HINT = "pip install 'xsearch[video]'"
AUDIO_RATE = 16_000
FRAME_SHORT_SIDE = 320  # sampled frames are scaled to this short side before the encoder's own preprocessing


@dataclass(frozen=True)
class Sampling:
    """How moments are picked (N = ``min_gap``, M = ``max_gap``, in seconds)."""

    min_gap: float = 1.0
    max_gap: float = 5.0
    scene_threshold: float = 0.10  # mean |difference| of grey thumbnails, 0..1
    max_frames: int = 300
    audio_window: float = 4.0
    audio_hop: float = 4.0
    max_audio_windows: int = 900
    silence_rms: float = 1e-4  # digital silence is not embedded


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: duration (s), frame size, frame rate, and whether there is an audio track."""

    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool


@dataclass
class Moment:
    """A sampled key frame (``image``) or audio window (``audio``, 16 kHz mono) at ``t`` seconds."""

    kind: str  # "frame" | "audio"
    t: float
    image: "Image.Image | None" = None
    audio: np.ndarray | None = None


def _av(path: str | os.PathLike[str]) -> Any:
    try:
        import av
    except ImportError:
        raise BadInput(f"{path}: video needs PyAV, not installed ({EXTRA_HINT})") from None
    return av


def _reason(path: str | os.PathLike[str], exc: Exception) -> BadInput:
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return BadInput(f"{path}: unreadable video ({first})")


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the container header (no decoding); ``BadInput`` naming the file if it is not a readable video."""
    av = _av(path)
    try:
        with av.open(str(path)) as container:
            return _info(path, container)
    except av.FFmpegError as exc:
        raise _reason(path, exc) from None


def _info(path: str | os.PathLike[str], container: Any) -> VideoInfo:
    if not container.streams.video:
        raise BadInput(f"{path}: no video stream")
    vs = container.streams.video[0]
    duration = container.duration / 1e6 if container.duration else (
        float(vs.duration * vs.time_base) if vs.duration else 0.0)
    fps = float(vs.average_rate) if vs.average_rate else 0.0
    return VideoInfo(max(duration, 0.0), int(vs.codec_context.width), int(vs.codec_context.height), fps,
                     bool(container.streams.audio))


def moments(path: str | os.PathLike[str], sampling: Sampling = Sampling(), audio: bool = True,
            frames: bool = True) -> tuple[VideoInfo, Iterator[Moment]]:
    """Open a video: its header info and a lazy iterator of moments in stream order (frames and audio windows
    interleaved). Errors while decoding are raised by the iterator as one-line ``BadInput``."""
    av = _av(path)
    if os.path.getsize(path) == 0:
        raise BadInput(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise _reason(path, exc) from None
    try:
        info = _info(path, container)
    except BaseException:
        container.close()
        raise
    return info, _walk(av, path, container, info, sampling, audio and info.has_audio, frames)


def _walk(av: Any, path: str | os.PathLike[str], container: Any, info: VideoInfo, sampling: Sampling,
          with_audio: bool, with_frames: bool) -> Iterator[Moment]:
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    streams = [vs] + ([container.streams.audio[0]] if with_audio else [])
    frames = _FramePicker(sampling, info.duration) if with_frames else None
    windows = _AudioWindows(av, sampling, info.duration) if with_audio else None
    try:
        with container:
            for packet in container.demux(*streams):
                if packet.stream.type == "video":
                    if frames is None or frames.full:
                        if windows is None:
                            break
                        continue
                    for frame in packet.decode():
                        m = frames.offer(frame, vs)
                        if m is not None:
                            yield m
                elif windows is not None:
                    for frame in packet.decode():
                        yield from windows.push(frame)
            if windows is not None:
                yield from windows.flush()
    except av.FFmpegError as exc:
        raise _reason(path, exc) from None


class _FramePicker:
    """Scene-change + periodic sampling of decoded frames (see :class:`Sampling`)."""

    def __init__(self, sampling: Sampling, duration: float):
        self.s = sampling
        self.max_gap = max(sampling.max_gap, duration / max(1, sampling.max_frames // 2))
        self.last_t: float | None = None
        self.prev: np.ndarray | None = None
        self.pending = False
        self.count = 0
        self.start: float | None = None
        self.index = 0

    @property
    def full(self) -> bool:
        return self.count >= self.s.max_frames

    def offer(self, frame: Any, stream: Any) -> Moment | None:
        """The frame as a moment if it is sampled, else None."""
        t = self._time(frame, stream)
        thumb = frame.reformat(width=32, height=18, format="gray").to_ndarray().astype(np.float32) / 255.0
        cut = self.prev is not None and float(np.abs(thumb - self.prev).mean()) > self.s.scene_threshold
        self.prev = thumb
        self.pending = self.pending or cut
        gap = None if self.last_t is None else t - self.last_t
        if not (gap is None or gap >= self.max_gap or (self.pending and gap >= self.s.min_gap)) or self.full:
            return None
        self.last_t, self.pending = t, False
        self.count += 1
        return Moment("frame", round(t, 3), image=_scaled(frame))

    def _time(self, frame: Any, stream: Any) -> float:
        self.index += 1
        t = float(frame.time) if frame.time is not None else (self.index - 1) / float(stream.average_rate or 25)
        if self.start is None:
            self.start = t
        return max(0.0, t - self.start)


def _scaled(frame: Any) -> "Image.Image":
    w, h = frame.width, frame.height
    scale = FRAME_SHORT_SIDE / min(w, h)
    if scale < 1:
        w, h = max(2, round(w * scale)), max(2, round(h * scale))
    return frame.reformat(width=w, height=h, format="rgb24").to_image()


class _AudioWindows:
    """Audio frames resampled to 16 kHz mono and cut into windows, holding at most one window of samples."""

    def __init__(self, av: Any, sampling: Sampling, duration: float):
        self.s = sampling
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self.window = int(sampling.audio_window * AUDIO_RATE)
        self.hop = int(max(sampling.audio_hop, duration / max(1, sampling.max_audio_windows)) * AUDIO_RATE)
        self.buf = np.zeros(0, np.float32)
        self.pos = 0  # sample index of buf[0]
        self.count = 0

    def push(self, frame: Any) -> Iterator[Moment]:
        for out in self.resampler.resample(frame):
            yield from self._add(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))

    def flush(self) -> Iterator[Moment]:
        for out in self.resampler.resample(None):
            yield from self._add(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        if len(self.buf) >= AUDIO_RATE and self.count < self.s.max_audio_windows:  # a last partial window >= 1 s
            yield from self._emit(self.buf)

    def _add(self, samples: np.ndarray) -> Iterator[Moment]:
        self.buf = np.concatenate([self.buf, samples])
        while len(self.buf) >= self.window and self.count < self.s.max_audio_windows:
            yield from self._emit(self.buf[: self.window])
            skip = min(self.hop, len(self.buf))
            self.buf, self.pos = self.buf[skip:], self.pos + skip
        if self.count >= self.s.max_audio_windows:
            self.buf = self.buf[:0]

    def _emit(self, wave: np.ndarray) -> Iterator[Moment]:
        self.count += 1
        if float(np.sqrt(np.mean(wave ** 2))) >= self.s.silence_rms:
            yield Moment("audio", round(self.pos / AUDIO_RATE, 3), audio=wave.copy())


def frame_at(path: str | os.PathLike[str], t: float) -> "Image.Image":
    """The frame shown at ``t`` seconds (for thumbnails of a video moment); ``BadInput`` if unreadable."""
    av = _av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInput(f"{path}: no video stream")
            vs = container.streams.video[0]
            start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
            container.seek(int(max(0.0, t) / vs.time_base) + (vs.start_time or 0), stream=vs, backward=True)
            last = None
            for frame in container.decode(vs):
                last = frame
                if frame.time is not None and frame.time - start >= t - 1e-3:
                    break
            if last is None:
                raise BadInput(f"{path}: no frame at {t:.2f} s")
            return last.to_image()
    except av.FFmpegError as exc:
        raise _reason(path, exc) from None
