"""End-to-end `xsearch index` throughput vs the encoder's pure forward throughput on the same real photos.

    python benchmarks/bench_ingest.py [--encoder xsearch-mini] [--workers 0 1 2] [--batch-size 32]

Ratio = ingest images/s ÷ forward images/s (forward = model inference on already decoded, preprocessed tensors).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, photo_folder, table  # noqa: E402

from xsearch import Collection  # noqa: E402
from xsearch.encoders import create  # noqa: E402
from xsearch.media import load_image  # noqa: E402


def forward_rate(encoder, files: list[Path], batch_size: int) -> float:
    """Images/s of encode_image_batch alone (decode + preprocess done beforehand)."""
    tensors = [encoder.preprocess_image(load_image(p)) for p in files]
    encoder.encode_image_batch(torch.stack(tensors[:batch_size]))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        encoder.encode_image_batch(torch.stack(tensors[i : i + batch_size]))
    return len(tensors) / (time.perf_counter() - start)


def ingest_rate(encoder, folder: Path, workers: int, batch_size: int) -> float:
    """Images/s of Collection.add on a fresh collection (discovery, hashing, decoding, inference, SQLite, FAISS)."""
    with tempfile.TemporaryDirectory() as home:
        col = Collection.open(home, "bench", encoder=encoder, create=True)
        start = time.perf_counter()
        report = col.add([folder], workers=workers, batch_size=batch_size)
        elapsed = time.perf_counter() - start
        col.close()
    return report.added / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="xsearch-mini")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    encoder = create(args.encoder)
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos")
        files = sorted(folder.glob("*.jpg"))
        fwd = forward_rate(encoder, files, args.batch_size)
        rows = [["forward only", "-", round(fwd, 1), "1.00"]]
        for w in args.workers:
            rate = ingest_rate(encoder, folder, w, args.batch_size)
            rows.append([f"xsearch index", w, round(rate, 1), f"{rate / fwd:.2f}"])
    print(f"# ingest: {len(files)} real photos, encoder {encoder.id}, batch {args.batch_size}; {machine()}\n")
    print(table(["what", "decode workers", "images/s", "ratio to forward"], rows))


if __name__ == "__main__":
    main()
