"""Precision/recall of `xsearch dupes` on a duplicate set built from real photos.

Each "original" photo gets copies a photo library really holds: an exact byte copy, a half-size resize, a JPEG
re-encode at quality 35, a 6% crop on every side, a burst-like sibling (shifted 4%, rotated 2 degrees, 8% brighter)
and, for every third original, a 90-degree EXIF-rotated phone copy. "Distinct" photos get no copies (hard negatives:
sports100 holds 8 photos of each sport). Ground truth: two files are duplicates iff they come from the same original.
Scores are over pairs: precision = true pairs among the pairs put in one group, recall = true pairs found.

    python benchmarks/bench_dupes.py --split train   # tuning set (flickr8k-train + sports100): sweeps parameters
    python benchmarks/bench_dupes.py --split dev     # honest check (dev-photos + imagenet-dev + flickr-dev)
"""
from __future__ import annotations

import argparse
import itertools
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import DATA, machine  # noqa: E402

SPLITS = {  # (originals, distinct) folders
    "train": (["flickr8k-train"], ["sports100", "flickr8k-train"]),
    "dev": (["dev-photos", "imagenet-dev"], ["imagenet-dev", "flickr-dev"]),
}


def photos(folders: list[str]) -> list[Path]:
    return sorted(p for f in folders for p in (DATA / f).rglob("*") if p.suffix.lower() in (".jpg", ".png"))


def variants(src: Path, dest: Path, stem: str, phone: bool) -> list[Path]:
    """Write the copies of one original into ``dest``; return their paths (the original's copy first)."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    out = [dest / f"{stem}.jpg", dest / f"{stem}-copy.jpg", dest / f"{stem}-half.jpg", dest / f"{stem}-q35.jpg",
           dest / f"{stem}-crop.jpg", dest / f"{stem}-burst.jpg"]
    im.save(out[0], quality=92)
    shutil.copy(out[0], out[1])
    im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS).save(out[2], quality=90)
    im.save(out[3], quality=35)
    dx, dy = int(w * 0.06), int(h * 0.06)
    im.crop((dx, dy, w - dx, h - dy)).save(out[4], quality=90)
    sx, sy = int(w * 0.04), int(h * 0.04)
    burst = im.rotate(2, resample=Image.Resampling.BILINEAR).crop((sx, sy, w, h)).resize((w, h))
    ImageEnhance.Brightness(burst).enhance(1.08).save(out[5], quality=90)
    if phone:
        exif = Image.Exif()
        exif[0x0112] = 6
        out.append(dest / f"{stem}-phone.jpg")
        im.transpose(Image.Transpose.ROTATE_90).save(out[-1], exif=exif, quality=90)
    return out


def build(split: str, n_orig: int, n_distinct: int, dest: Path, seed: int = 0) -> list[list[str]]:
    """Write the set; return the true groups (resolved paths); distinct photos are singletons."""
    orig_dirs, distinct_dirs = SPLITS[split]
    rng = random.Random(seed)
    pool_o = photos(orig_dirs)
    originals = rng.sample(pool_o, n_orig)
    pool_d = [p for p in photos(distinct_dirs) if p not in set(originals)]
    distinct = rng.sample(pool_d, min(n_distinct, len(pool_d)))
    groups = []
    for i, src in enumerate(originals):
        groups.append([str(p.resolve()) for p in variants(src, dest, f"o{i:03d}", phone=i % 3 == 0)])
    for i, src in enumerate(distinct):
        path = dest / f"d{i:03d}.jpg"
        Image.open(src).convert("RGB").save(path, quality=92)
        groups.append([str(path.resolve())])
    return groups


def pairs_of(groups) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def score(truth: set, found_groups) -> tuple[float, float, int]:
    found = pairs_of(found_groups)
    tp = len(found & truth)
    return (tp / len(found) if found else 1.0), tp / len(truth), len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=sorted(SPLITS), default="dev")
    ap.add_argument("--originals", type=int, default=60)
    ap.add_argument("--distinct", type=int, default=200)
    ap.add_argument("--sweep", action="store_true", help="also print a threshold x max-hash grid")
    args = ap.parse_args()

    from xsearch import Collection
    from xsearch.engine.dupes import DEFAULT_MAX_HASH, DEFAULT_THRESHOLD, find_dupes, phash

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        truth_groups = build(args.split, args.originals, args.distinct, folder)
        truth = pairs_of(truth_groups)
        n_files = sum(len(g) for g in truth_groups)
        with Collection.open(Path(tmp) / "home", create=True, encoder="xsearch-mini") as col:
            col.add(folder)
            cache: dict[str, int | None] = {}

            def hasher(path: str):
                if path not in cache:
                    cache[path] = phash(path)
                return cache[path]

            t0 = time.perf_counter()
            groups = find_dupes(col, DEFAULT_THRESHOLD, DEFAULT_MAX_HASH, hasher=hasher)
            seconds = time.perf_counter() - t0
            print(f"\n{args.split}: {args.originals} originals with {n_files - args.distinct - args.originals} copies, "
                  f"{args.distinct} distinct photos, {n_files} files, {len(truth)} true pairs; {machine()}\n")
            print("| method | threshold | max hash | precision | recall | pairs found |")
            print("|---|---|---|---|---|---|")
            rows = [("vectors + pHash (default)", DEFAULT_THRESHOLD, DEFAULT_MAX_HASH, groups),
                    ("vectors only", DEFAULT_THRESHOLD, 64, find_dupes(col, DEFAULT_THRESHOLD, 64, hasher=hasher)),
                    ("identical bytes only", 1.0, 0, [s for g in groups for s in g.exact_sets]
                     + [[m.path for m in g.members] for g in groups if g.kind == "exact"])]
            grid = itertools.product((0.75, 0.80, 0.85, 0.90), (10, 12, 14, 16, 18, 22, 64)) if args.sweep else []
            rows += [("sweep", t, h, find_dupes(col, t, h, hasher=hasher)) for t, h in grid]
            for name, t, h, found in rows:
                paths = [[m.path for m in g.members] if hasattr(g, "members") else list(g) for g in found]
                p, r, n = score(truth, paths)
                print(f"| {name} | {t:.2f} | {h} | {p:.3f} | {r:.3f} | {n} |")
            print(f"\nfind_dupes with hashing: {seconds:.2f} s for {n_files} files")
            missed = truth - pairs_of([[m.path for m in g.members] for g in groups])
            kinds: dict[str, int] = {}
            for a, b in missed:
                for p in (a, b):
                    kind = Path(p).stem.split("-")[-1] if "-" in Path(p).stem else "original"
                    kinds[kind] = kinds.get(kind, 0) + 1
            print("missed pair ends by copy kind:", dict(sorted(kinds.items())))


if __name__ == "__main__":
    main()
