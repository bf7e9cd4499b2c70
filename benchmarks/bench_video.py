"""Video indexing speed: seconds of video indexed per second of wall time, with the decode vs embed split.

    python benchmarks/bench_video.py [--seconds 60] [--size 1280x720] [--fps 30] [--repeats 2]

Makes (once, cached in benchmarks/_data/) an H.264 + AAC clip of realistic resolution: the development photos
(../shared/data/dev-photos, or generated pictures without it) shown 6 s each with a slow pan and film grain, so every
frame differs and the bitrate is camera-like (several Mbit/s), over a sound track of tones and noise. Then, medians over --repeats:

- "decode every frame": PyAV decoding all frames, nothing else (the baseline: what a sampler that looks at
  every frame pays; xsearch skips non-reference frames of H.264/HEVC/MPEG-4, so it can beat it);
- "sample frames": media_video.moments without audio: decoding + scene-change detection + frame sampling;
- "sample frames + audio": the same with the audio windows (16 kHz resampling);
- "embed_video": decoding and embedding the moments (xsearch-mini), timed apart: decode s vs embed s;
- "xsearch index": Collection.add on a fresh collection (hashing, SQLite, FAISS included).

"x realtime" = seconds of video per second of wall time; "vs decode" = that row's time / the baseline's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, machine, table  # noqa: E402

from xsearch import Collection  # noqa: E402
from xsearch.encoders import create  # noqa: E402
from xsearch.engine.video import embed_video  # noqa: E402
from xsearch.media_video import moments  # noqa: E402

SCENE_S = 6.0


def pictures(size: tuple[int, int]) -> list:
    """Dev photos (or generated pictures), each scaled to 1.25x ``size`` so a pan has room."""
    from PIL import Image

    paths = sorted((DATA / "dev-photos").glob("*.jpg"))
    big = (int(size[0] * 1.25), int(size[1] * 1.25))
    if paths:
        return [np.asarray(Image.open(p).convert("RGB").resize(big)) for p in paths]
    rng = np.random.default_rng(0)
    return [np.repeat(np.repeat(rng.integers(0, 255, (big[1] // 40 + 1, big[0] // 40 + 1, 3), dtype=np.uint8),
                                40, 0), 40, 1)[: big[1], : big[0]] for _ in range(10)]


def make_clip(path: Path, seconds: float, size: tuple[int, int], fps: int) -> Path:
    """An H.264/AAC mp4: photos panning, a scene change every SCENE_S seconds, tones and noise as sound."""
    import av

    pics = pictures(size)
    w, h = size
    grain = np.random.default_rng(1).integers(-8, 9, (16, h, w, 3), dtype=np.int16)  # film grain: camera-like bitrate
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "faster", "crf": "20"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        as_ = out.add_stream("aac", rate=48_000, layout="mono")
        for n in range(int(seconds * fps)):
            t = n / fps
            pic = pics[int(t // SCENE_S) % len(pics)]
            f = (t % SCENE_S) / SCENE_S
            x, y = int(f * (pic.shape[1] - w)), int(f * (pic.shape[0] - h) / 2)
            px = np.clip(pic[y : y + h, x : x + w] + grain[n % len(grain)], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(px, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        rate, size_ = 48_000, as_.codec_context.frame_size or 1024
        rng = np.random.default_rng(0)
        total = int(seconds * rate)
        for start in range(0, total, size_):
            t = (start + np.arange(size_)) / rate
            sec = int(start / rate)
            wave = 0.2 * np.sin(2 * np.pi * (220 + 110 * (sec % 5)) * t) if sec % 8 < 5 else 0.1 * rng.standard_normal(size_)
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32).reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(as_.encode(frame))
        out.mux(as_.encode())
    return path


def decode_all(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        return sum(1 for _ in c.decode(video=0))


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--encoder", default="xsearch-mini")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    cache = ROOT / "benchmarks" / "_data"
    cache.mkdir(parents=True, exist_ok=True)
    clip = cache / f"bench-grain-{size[0]}x{size[1]}-{args.fps}fps-{int(args.seconds)}s.mp4"
    if not clip.exists():
        start = time.perf_counter()
        make_clip(clip, args.seconds, size, args.fps)
        print(f"made {clip.name} ({clip.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    enc = create(args.encoder)
    from PIL import Image

    enc.encode_images([Image.new("RGB", (64, 64))])
    enc.encode_audio([(np.zeros(16_000, np.float32), 16_000)])  # load both towers before timing
    dur = args.seconds
    rows = []
    base, frames = timed(lambda: decode_all(clip), args.repeats)
    rows.append(["decode every frame (baseline)", f"{frames} frames", "", "", base, dur / base, 1.0])
    t, got = timed(lambda: [m.kind for m in moments(clip, audio=False)[1]], args.repeats)
    rows.append(["sample frames", f"{len(got)} frames", "", "", t, dur / t, t / base])
    t, got = timed(lambda: [m.kind for m in moments(clip)[1]], args.repeats)
    n_audio = sum(k == "audio" for k in got)
    rows.append(["sample frames + audio", f"{len(got) - n_audio} frames + {n_audio} windows", "", "", t, dur / t,
                 t / base])
    t, v = timed(lambda: embed_video(enc, str(clip)), args.repeats)
    rows.append(["embed_video", f"{len(v.kinds)} moments", v.decode_s, v.embed_s, t, dur / t, t / base])

    def index() -> float:
        with tempfile.TemporaryDirectory() as home:
            with Collection.open(home, "bench", encoder=enc, create=True) as col:
                col.add([clip])
                return len(col)

    t, n = timed(index, args.repeats)
    rows.append(["xsearch index (Collection.add)", f"{n} vectors", "", "", t, dur / t, t / base])
    print(f"{machine()}; load average {os.getloadavg()[0]:.1f}; clip {size[0]}x{size[1]} {args.fps} fps "
          f"{dur:.0f} s H.264 + AAC; encoder {args.encoder}; medians of {args.repeats}\n")
    print(table(["step", "sampled", "decode s", "embed s", "wall s", "x realtime", "vs decode"], rows))


if __name__ == "__main__":
    main()
