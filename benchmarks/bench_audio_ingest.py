"""Audio ingest speed, tower alone vs tower + EfficientNet-Lite0 branch, in the same run.

Indexes the same N real recordings (UrbanSound8K / Kitchen20 / Speech Commands clips of 1-5 s, copied into a temp
folder) into a fresh xsearch-mini collection whose audio tower is (a) the plain tower at git ``--old`` and (b) the
shipped one; prints files/s of ``Collection.add`` and of ``AudioTower.encode`` alone, with ratios to (a).

  python benchmarks/bench_audio_ingest.py --n 200 --threads 1
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_audio import old_tower  # noqa: E402
from real_audio import read_rows  # noqa: E402
from xsearch import Collection  # noqa: E402
from xsearch.encoders.audio import WEIGHTS_FILE, AudioTower  # noqa: E402
from xsearch.encoders.mini import XsearchMini  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real-audio"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--old", default="HEAD", help="git revision of the plain tower (default: the committed one)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_rows(args.real)
    rows = [rows[i] for i in range(0, len(rows), max(1, len(rows) // args.n))][: args.n]  # every source, evenly
    seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i, r in enumerate(rows):
            shutil.copy(r["path"], media / f"{i:04d}{Path(r['path']).suffix}")
        paths = sorted(str(p) for p in media.iterdir())
        towers = [(f"tower ({args.old})", AudioTower.load(old_tower(args.old, Path(tmp) / "old"))),
                  ("shipped", AudioTower.load(WEIGHTS_FILE))]
        out = []
        for name, tower in towers:
            tower.encode(paths[:2])  # load everything (Lite0 included) before timing
            t0 = time.perf_counter()
            tower.encode(paths)
            enc = time.perf_counter() - t0
            mini = XsearchMini("cpu")
            mini.audio = tower
            t0 = time.perf_counter()
            with Collection.open(Path(tmp) / name.split()[0], "bench", encoder=mini, create=True) as col:
                report = col.add(media)
            ingest = time.perf_counter() - t0
            assert not report.skipped, report.skipped
            out.append((name, len(paths) / enc, len(paths) / ingest))
        import soundfile as sf

        seconds = sum(sf.info(p).duration for p in paths)
    print(f"\n{len(paths)} clips, {seconds:.0f} s of audio, {args.threads} torch thread(s)\n")
    print("| audio tower | encode files/s | ratio | `Collection.add` files/s | ratio |")
    print("|---|---|---|---|---|")
    for name, enc, ing in out:
        print(f"| {name} | {enc:.1f} | {enc / out[0][1]:.2f} | {ing:.1f} | {ing / out[0][2]:.2f} |")


if __name__ == "__main__":
    main()
