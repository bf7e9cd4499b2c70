"""End-to-end `xsearch index` throughput vs the encoder's pure forward throughput on the same real photos.

    python benchmarks/bench_ingest.py [--encoder xsearch-mini] [--workers 0 1 2] [--batch-size 32] [--repeats 2]

For each decode-worker setting, ``Collection.add`` indexes a copy of the development photos into a fresh
collection while the encoder's ``encode_image_batch`` is timed inside that same run. Ratio = end-to-end images/s
÷ forward images/s of that run (forward = model inference on already decoded, preprocessed batches), so both sides
see the same machine load; 1.0 means decoding, hashing, SQLite and FAISS cost nothing on top of inference.
A separate "forward only" row embeds pre-decoded tensors outside any ingest (the encoder's standalone rate); the
last column divides each end-to-end rate by it. The "(default)" row lets `xsearch index` choose decode workers and
torch threads by core count (xsearch/batching.py). Medians over --repeats; the load average is printed because the
CPU may be shared with other jobs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, photo_folder, table  # noqa: E402

from xsearch import Collection  # noqa: E402
from xsearch.engine.batching import default_workers  # noqa: E402
from xsearch.encoders import create  # noqa: E402
from xsearch.media import load_image  # noqa: E402


def forward_rate(encoder, files: list[Path], batch_size: int) -> float:
    """Images/s of encode_image_batch alone on pre-decoded, preprocessed tensors (after a warm-up pass)."""
    tensors = [encoder.preprocess_image(load_image(p)) for p in files]
    for _ in range(2):
        start = time.perf_counter()
        for i in range(0, len(tensors), batch_size):
            encoder.encode_image_batch(torch.stack(tensors[i : i + batch_size]))
    return len(tensors) / (time.perf_counter() - start)


class TimedForward:
    """Wraps an encoder's encode_image_batch to add up the time spent in it and the images it saw."""

    def __init__(self, encoder):
        self.encoder, self.inner = encoder, encoder.encode_image_batch
        self.seconds, self.images = 0.0, 0

    def __call__(self, batch):
        start = time.perf_counter()
        out = self.inner(batch)
        self.seconds += time.perf_counter() - start
        self.images += len(batch)
        return out

    def __enter__(self) -> "TimedForward":
        self.encoder.encode_image_batch = self
        return self

    def __exit__(self, *exc) -> None:
        del self.encoder.encode_image_batch  # back to the class method


def ingest_rates(encoder, folder: Path, workers: int | None, batch_size: int) -> tuple[float, float]:
    """(end-to-end images/s of Collection.add on a fresh collection, forward images/s inside that run)."""
    with tempfile.TemporaryDirectory() as home, TimedForward(encoder) as fwd:
        col = Collection.open(home, "bench", encoder=encoder, create=True)
        start = time.perf_counter()
        report = col.add([folder], workers=workers, batch_size=batch_size)
        elapsed = time.perf_counter() - start
        col.close()
    return report.added / elapsed, fwd.images / fwd.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="xsearch-mini")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="fixed settings; the default "
                    "(chosen by core count, what `xsearch index` does) always runs too")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    encoder = create(args.encoder)
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos")
        files = sorted(folder.glob("*.jpg"))
        rows = [["forward only (pre-decoded)", "-", round(med(forward_rate(encoder, files, args.batch_size)
                                                              for _ in range(args.repeats)), 1), "-", "-", "-"]]
        standalone = rows[0][2]
        default = default_workers(str(getattr(encoder, "device", "cpu")))
        for w in [None, *args.workers]:
            runs = [ingest_rates(encoder, folder, w, args.batch_size) for _ in range(args.repeats)]
            e2e, fwd = med(r[0] for r in runs), med(r[1] for r in runs)
            rows.append(["xsearch index" + (" (default)" if w is None else ""), default if w is None else w,
                         round(e2e, 1), round(fwd, 1), f"{med(r[0] / r[1] for r in runs):.2f}",
                         f"{e2e / standalone:.2f}"])
    print(f"# ingest: {len(files)} real photos, encoder {encoder.id}, batch {args.batch_size}, "
          f"median of {args.repeats}; {machine()}; load average {load:.1f} at start, {os.getloadavg()[0]:.1f} "
          f"at end\n")
    print(table(["what", "decode workers", "images/s", "forward images/s (same run)", "ratio",
                 "ratio to forward only"], rows))


if __name__ == "__main__":
    main()
