"""Retrieval quality and encode speed of encoders on the development sets; prints a markdown table.

    .venv/bin/python benchmarks/bench_quality.py [--encoder NAME ...] [--data ../shared/data] [--no-before]

Uses only the public Encoder API (``xsearch.encoders.create``), so any registered encoder can be measured.
By default it measures ``xsearch-mini`` twice, side by side: ``xsearch-mini (ConSE only)`` is the same encoder
with its trained image head switched off (``BridgeConfig(head=False)``: xsearch-mini v1's image vectors, the
"before"), and ``xsearch-mini`` as shipped (the "after"). Text vectors are the same in both.
- dev-photos: text->image R@1/5/10 for the 40 queries of queries.csv;
- imagenet-dev: zero-shot tagging top-1/top-5 (images vs ``"a photo of a {name}."`` for the 1000 ImageNet
  names) and retrieval R@1/R@5 with the query ``"a photo of a {label}."``;
- flickr-dev: 1000 captions -> 200 images R@1/5/10 and median rank, 200 images -> captions R@1/5;
- throughput: images/s of ``encode_images`` on all photos from file (decode + preprocess + model) and
  texts/s of ``encode_text`` on the captions, after a warm-up.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import DATA, machine, table  # noqa: E402

from xsearch.encoders import create  # noqa: E402
from xsearch.encoders.mini import imagenet_classes  # noqa: E402  (class list only; no model is loaded)
from xsearch.evaluate import ranks, recall_at_k, top_k_accuracy  # noqa: E402

TAG_PROMPT = "a photo of a {}."


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def grouped(rows: list[dict[str, str]], key: str) -> tuple[list[str], np.ndarray]:
    """Unique files in first-seen order and, per row, the index of its file."""
    files = list(dict.fromkeys(r["file"] for r in rows))
    index = {f: i for i, f in enumerate(files)}
    return files, np.array([index[r["file"]] for r in rows])


def dev_photos(enc, data: Path) -> dict[str, float]:
    rows = read_csv(data / "dev-photos" / "queries.csv")
    files = sorted(p.name for p in (data / "dev-photos").glob("*.jpg"))
    gt = np.array([files.index(r["file"]) for r in rows])
    img = enc.encode_images([data / "dev-photos" / f for f in files])
    r = recall_at_k(enc.encode_text([r["query"] for r in rows]) @ img.T, gt, (1, 5, 10))
    return {"dev-photos t2i R@1": r[1], "dev-photos t2i R@5": r[5], "dev-photos t2i R@10": r[10]}


def imagenet_dev(enc, data: Path) -> dict[str, float]:
    rows = read_csv(data / "imagenet-dev" / "labels.csv")
    classes = imagenet_classes()
    wnids = [c.wnid for c in classes]
    img = enc.encode_images([data / "imagenet-dev" / r["file"] for r in rows])
    labels = enc.encode_text([TAG_PROMPT.format(c.name) for c in classes])
    tag = top_k_accuracy(img @ labels.T, [wnids.index(r["wnid"]) for r in rows], (1, 5))
    queries = enc.encode_text([TAG_PROMPT.format(r["label"]) for r in rows])
    ret = recall_at_k(queries @ img.T, np.arange(len(rows)), (1, 5))
    return {"imagenet-dev tag top-1": tag[1], "imagenet-dev tag top-5": tag[5],
            "imagenet-dev t2i R@1": ret[1], "imagenet-dev t2i R@5": ret[5]}


def flickr_dev(enc, data: Path) -> dict[str, float]:
    rows = read_csv(data / "flickr-dev" / "captions.csv")
    files, gt = grouped(rows, "file")
    img = enc.encode_images([data / "flickr-dev" / f for f in files])
    sim = enc.encode_text([r["caption"] for r in rows]) @ img.T
    t2i = recall_at_k(sim, gt, (1, 5, 10))
    i2t = recall_at_k(sim.T, [np.flatnonzero(gt == i) for i in range(len(files))], (1, 5))
    return {"flickr-dev t2i R@1": t2i[1], "flickr-dev t2i R@5": t2i[5], "flickr-dev t2i R@10": t2i[10],
            "flickr-dev t2i median rank": float(np.median(ranks(sim, gt))),
            "flickr-dev i2t R@1": i2t[1], "flickr-dev i2t R@5": i2t[5]}


def throughput(enc, data: Path) -> dict[str, float]:
    photos = sorted(p for name in ("dev-photos", "imagenet-dev", "flickr-dev") for p in (data / name).glob("*.jpg"))
    captions = [r["caption"] for r in read_csv(data / "flickr-dev" / "captions.csv")]
    enc.encode_images(photos[:2])
    enc.encode_text(captions[:2])
    t0 = time.perf_counter()
    enc.encode_images(photos)
    t1 = time.perf_counter()
    enc.encode_text(captions)
    t2 = time.perf_counter()
    return {f"encode images/s ({len(photos)} files)": len(photos) / (t1 - t0),
            f"encode texts/s ({len(captions)} captions)": len(captions) / (t2 - t1)}


CONSE_ONLY = "xsearch-mini (ConSE only)"


def build(name: str):
    """The encoder behind a column name (``CONSE_ONLY``: xsearch-mini without its trained image head)."""
    if name == CONSE_ONLY:
        from xsearch.encoders.mini import BridgeConfig, XsearchMini

        return XsearchMini(config=BridgeConfig(head=False))
    return create(name)


def measure(name: str, data: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    enc = build(name)
    out: dict[str, float] = {}
    for part in (dev_photos, imagenet_dev, flickr_dev, throughput):
        out.update(part(enc, data))
    out["total seconds (load + all of the above)"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", action="append", help="encoder name (repeatable); default xsearch-mini")
    ap.add_argument("--data", type=Path, default=DATA, help="folder with dev-photos/, imagenet-dev/, flickr-dev/")
    ap.add_argument("--no-before", action="store_true", help="skip the ConSE-only column of xsearch-mini")
    args = ap.parse_args(argv)
    names = args.encoder or ["xsearch-mini"]
    if "xsearch-mini" in names and not args.no_before:
        names.insert(names.index("xsearch-mini"), CONSE_ONLY)
    results = {name: measure(name, args.data) for name in names}
    metrics = list(next(iter(results.values())))
    rows = [[m] + [results[n].get(m, "-") for n in names] for m in metrics]
    print(f"# quality on {args.data} ({machine()})\n")
    print(table(["metric", *names], rows))


if __name__ == "__main__":
    main()
