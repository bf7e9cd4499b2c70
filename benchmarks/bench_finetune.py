"""Does fine-tuning xsearch-mini on a user's own image–caption pairs beat the frozen encoder on held-out pairs?

Data: flickr-dev (200 photos x 5 captions), split BY IMAGE with a fixed seed: ``--test-images`` (50) are held
out and never used for any choice; the rest (150) go through ``xsearch train`` exactly as a user would run it
(a manifest of their pairs; the trainer carves its own validation images for early stopping out of them).
The frozen and the fine-tuned encoders are then compared on the held-out test images through the public
Encoder API (``xsearch-mini`` vs ``align:<folder>``), text->image and image->text R@1/R@5/R@10 and mean rank.

Out of domain (``--ood``, default on): text->image on dev-photos (40 queries, 20 photos) and imagenet-dev
("a photo of a {label}", 100 photos) — does the flickr adapter hurt photos of other kinds?

    .venv/bin/python benchmarks/bench_finetune.py                      # one split (seed 0)
    .venv/bin/python benchmarks/bench_finetune.py --seeds 0 1 2        # three different splits
    .venv/bin/python benchmarks/bench_finetune.py --image-features embed --image-features auto
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsearch.encoders.registry import create  # noqa: E402
from xsearch.evaluate import retrieval_report  # noqa: E402
from xsearch.train.loop import TrainConfig, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
KS = (1, 5, 10)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def split_flickr(seed: int, n_test: int) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(train files, test files, all caption rows): a split by image with its own seed."""
    rows = read_csv(DATA / "flickr-dev" / "captions.csv")
    files = sorted({r["file"] for r in rows})
    order = np.random.default_rng(1000 + seed).permutation(len(files))
    test = sorted(files[i] for i in order[:n_test])
    return sorted(set(files) - set(test)), test, rows


def write_manifest(path: Path, files: list[str], rows: list[dict[str, str]]) -> None:
    keep = set(files)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "caption"])
        for r in rows:
            if r["file"] in keep:
                w.writerow([str(DATA / "flickr-dev" / r["file"]), r["caption"]])


def t2i_i2t(encoder, images: list[Path], captions: list[str], owner: list[int]) -> dict[str, dict[str, float]]:
    """Caption->image and image->caption reports (5 captions per image)."""
    img = encoder.encode_images([str(p) for p in images])
    txt = encoder.encode_text(captions)
    sim = txt @ img.T
    owner_arr = np.asarray(owner, dtype=np.int64)
    per_image = [np.flatnonzero(owner_arr == i).tolist() for i in range(len(images))]
    return {"text_to_image": retrieval_report(sim, owner_arr, KS), "image_to_text": retrieval_report(sim.T, per_image, KS)}


def t2i(encoder, images: list[Path], queries: list[str], owner: list[int]) -> dict[str, float]:
    sim = encoder.encode_text(queries) @ encoder.encode_images([str(p) for p in images]).T
    return retrieval_report(sim, np.asarray(owner, dtype=np.int64), KS)


def ood_sets() -> dict[str, tuple[list[Path], list[str], list[int]]]:
    """dev-photos queries and imagenet-dev 'a photo of a {label}' as (images, queries, image index per query)."""
    out = {}
    q = read_csv(DATA / "dev-photos" / "queries.csv")
    files = sorted({r["file"] for r in q})
    out["dev-photos"] = ([DATA / "dev-photos" / f for f in files], [r["query"] for r in q],
                         [files.index(r["file"]) for r in q])
    lab = read_csv(DATA / "imagenet-dev" / "labels.csv")
    out["imagenet-dev"] = ([DATA / "imagenet-dev" / r["file"] for r in lab], [f"a photo of a {r['label']}" for r in lab],
                           list(range(len(lab))))
    return out


def run_split(seed: int, args, frozen, work: Path) -> dict:
    train_files, test_files, rows = split_flickr(seed, args.test_images)
    manifest = work / f"train-{seed}.csv"
    write_manifest(manifest, train_files, rows)
    test_rows = [r for r in rows if r["file"] in set(test_files)]
    images = [DATA / "flickr-dev" / f for f in test_files]
    captions, owner = [r["caption"] for r in test_rows], [test_files.index(r["file"]) for r in test_rows]
    result = {"seed": seed, "train_images": len(train_files), "test_images": len(test_files),
              "frozen": t2i_i2t(frozen, images, captions, owner), "tuned": {}}
    for kind in args.image_features:
        t0 = time.perf_counter()
        res = train(TrainConfig(str(manifest), str(work / f"enc-{seed}-{kind}"), epochs=args.epochs, seed=seed,
                                image_features=kind, train_sides="both" if args.text_adapter else "auto",
                                cache_dir=str(args.cache), quiet=True))
        tuned = create(res.encoder, cache=False)
        entry = {"train_seconds": round(time.perf_counter() - t0, 1), "best_epoch": res.fit.best_epoch,
                 "val_before": res.fit.before["mean_recall"], "val_after": res.fit.after["mean_recall"],
                 "test": t2i_i2t(tuned, images, captions, owner)}
        if args.ood:
            entry["ood"] = {name: t2i(tuned, *s) for name, s in ood_sets().items()}
        result["tuned"][kind] = entry
    return result


def fmt(m: dict[str, float]) -> str:
    return " ".join(f"{m[f'R@{k}']:.3f}" for k in KS) + f"  {m['mean_rank']:6.2f}"


def print_tables(results: list[dict], frozen_ood: dict) -> None:
    print("\nHeld-out flickr-dev test images (never used for training, validation or choices)")
    head = "R@1 R@5 R@10 meanrank"
    print(f"{'split':>5} {'encoder':<24} {'text->image ' + head:<36} {'image->text ' + head:<36}")
    for r in results:
        lines = [("xsearch-mini (frozen)", r["frozen"])] + [(f"fine-tuned [{k}]", v["test"]) for k, v in r["tuned"].items()]
        for name, m in lines:
            print(f"{r['seed']:>5} {name:<24} {fmt(m['text_to_image']):<36} {fmt(m['image_to_text']):<36}")
    if len(results) > 1:
        print("mean over splits:")
        kinds = list(results[0]["tuned"])
        for name, get in [("xsearch-mini (frozen)", lambda r: r["frozen"])] + [
                (f"fine-tuned [{k}]", lambda r, k=k: r["tuned"][k]["test"]) for k in kinds]:
            keys = ("R@1", "R@5", "R@10", "mean_rank")
            avg = {d: {key: float(np.mean([get(r)[d][key] for r in results])) for key in keys}
                   for d in ("text_to_image", "image_to_text")}
            print(f"{'mean':>5} {name:<24} {fmt(avg['text_to_image']):<36} {fmt(avg['image_to_text']):<36}")
    print("\nTraining (validation = images carved from the training side)")
    for r in results:
        for k, v in r["tuned"].items():
            print(f"  split {r['seed']} [{k}]: val mean recall {v['val_before']:.3f} -> {v['val_after']:.3f}, "
                  f"best epoch {v['best_epoch']}, {v['train_seconds']} s (incl. features unless cached)")
    if frozen_ood:
        print("\nOut of domain, text->image R@1 R@5 R@10 meanrank (adapter trained on flickr only)")
        for r in results:
            for name, m in frozen_ood.items():
                print(f"  split {r['seed']} {name:<13} frozen {fmt(m)}   " +
                      "   ".join(f"[{k}] {fmt(v['ood'][name])}" for k, v in r["tuned"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one split (and training seed) per value")
    ap.add_argument("--test-images", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-features", action="append", default=None, help="auto, embed, pooled, embed+pooled")
    ap.add_argument("--text-adapter", action="store_true", help="also train a text-side adapter")
    ap.add_argument("--no-ood", dest="ood", action="store_false")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder [default: a temp folder]")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.image_features = args.image_features or ["auto"]
    frozen = create("xsearch-mini")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        args.cache = args.cache or Path(tmp) / "cache"
        results = [run_split(seed, args, frozen, Path(tmp)) for seed in args.seeds]
    frozen_ood = {name: t2i(frozen, *s) for name, s in ood_sets().items()} if args.ood else {}
    if args.json:
        print(json.dumps({"splits": results, "frozen_ood": frozen_ood}, indent=1))
    else:
        print_tables(results, frozen_ood)


if __name__ == "__main__":
    main()
