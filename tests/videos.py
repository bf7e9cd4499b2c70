"""Videos the tests (and benchmarks/bench_video.py) make themselves with PyAV: still scenes plus a sound track."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CODECS = {".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".mkv": ("libx264", "libopus"),
          ".webm": ("libvpx", "libopus"), ".avi": ("mpeg4", "mp3")}


def tone(seconds: float, freq: float = 440.0, rate: int = 48_000, amp: float = 0.3) -> np.ndarray:
    """A sine tone, mono float32."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, scenes: Sequence[tuple[Image.Image, float]], size: tuple[int, int] = (320, 240),
               fps: int = 10, audio: np.ndarray | None = None, rate: int = 48_000, noise: float = 0.0,
               seed: int = 0) -> Path:
    """Encode ``scenes`` (image, seconds) in order at ``size``/``fps``; ``audio`` (mono float32 at ``rate``) as the
    sound track. ``noise`` adds per-frame pixel noise (std, 0..255) so consecutive frames are not identical."""
    import av

    vcodec, acodec = CODECS[path.suffix.lower()]
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        as_ = out.add_stream(acodec, rate=rate, layout="mono") if audio is not None else None
        n = 0
        for image, seconds in scenes:
            base = np.asarray(image.convert("RGB").resize(size), dtype=np.float32)
            for _ in range(int(round(seconds * fps))):
                px = base if not noise else np.clip(base + rng.normal(0, noise, base.shape), 0, 255)
                frame = av.VideoFrame.from_ndarray(px.astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = n, Fraction(1, fps)
                out.mux(vs.encode(frame))
                n += 1
        out.mux(vs.encode())
        if as_ is not None:
            _write_audio(av, out, as_, audio, rate)
    return path


def _write_audio(av, out, stream, audio: np.ndarray, rate: int) -> None:
    size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, len(audio), size):
        chunk = audio[start : start + size]
        if len(chunk) < size:
            chunk = np.pad(chunk, (0, size - len(chunk)))
        fmt = stream.codec_context.format.name
        data = chunk.reshape(1, -1).astype(np.float32)
        ints = {"s16": (np.int16, 32767), "s32": (np.int32, 2**31 - 1)}.get(fmt.rstrip("p"))
        if ints:
            data = (np.clip(data, -1, 1) * ints[1]).astype(ints[0])
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
        pts += size
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def solid(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A plain coloured image."""
    return Image.new("RGB", size, color)
