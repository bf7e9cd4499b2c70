"""Choose an encoder's default ``--min-score`` (``xsearch.engine.query.DEFAULT_MIN_SCORE``) from training data.

Caption -> photo search on N flickr8k-train photos (one caption each): the default is the score that keeps
``--keep`` (95%) of the correct caption -> photo scores. The same cutoff is then checked, not tuned, on flickr-dev:
the share of correct matches it keeps and the share of wrong top-10 hits it removes.

    python benchmarks/calibrate_min_score.py [--encoder xsearch-mini] [--n 500] [--keep 0.95]
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import DATA, machine  # noqa: E402


def pairs(folder: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(photo paths, one caption each) for ``n`` random photos of a captions.csv folder."""
    with open(DATA / folder / "captions.csv", newline="") as fh:
        first: dict[str, str] = {}
        for row in csv.DictReader(fh):
            first.setdefault(row["file"], row["caption"])
    files = random.Random(seed).sample(sorted(first), min(n, len(first)))
    return [str(DATA / folder / f) for f in files], [first[f] for f in files]


def stats(encoder, folder: str, n: int, cutoff: float | None = None) -> dict:
    paths, captions = pairs(folder, n)
    sims = encoder.encode_text(captions) @ encoder.encode_images(paths).T
    right = np.diag(sims)
    top = np.argsort(-sims, axis=1)[:, :10]
    wrong = np.array([sims[i, j] for i in range(len(paths)) for j in top[i] if j != i])
    cutoff = float(np.quantile(right, 1 - KEEP)) if cutoff is None else cutoff
    return {"n": len(paths), "cutoff": cutoff, "kept_right": float((right >= cutoff).mean()),
            "cut_wrong_top10": float((wrong < cutoff).mean()), "right_median": float(np.median(right)),
            "wrong_top10_median": float(np.median(wrong))}


KEEP = 0.95


def main() -> None:
    global KEEP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="xsearch-mini")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--keep", type=float, default=0.95)
    args = ap.parse_args()
    KEEP = args.keep

    from xsearch.encoders import create

    enc = create(args.encoder)
    train = stats(enc, "flickr8k-train", args.n)
    dev = stats(enc, "flickr-dev", args.n, cutoff=train["cutoff"])
    print(f"\n{args.encoder} ({enc.fingerprint}); {machine()}\n")
    print("| set | photos | cutoff | correct kept | wrong top-10 hits cut | median correct | median wrong top-10 |")
    print("|---|---|---|---|---|---|---|")
    for name, s in (("flickr8k-train (chooses)", train), ("flickr-dev (check)", dev)):
        print(f"| {name} | {s['n']} | {s['cutoff']:.3f} | {s['kept_right']:.1%} | {s['cut_wrong_top10']:.1%} | "
              f"{s['right_median']:.3f} | {s['wrong_top10_median']:.3f} |")
    print(f"\nDEFAULT_MIN_SCORE[{args.encoder!r}] = {round(train['cutoff'], 2)}")


if __name__ == "__main__":
    main()
