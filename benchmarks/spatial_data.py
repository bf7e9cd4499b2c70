"""Cached EfficientNet-Lite0 spatial maps (7x7x1280 at 224 px) of the image-head training photos (experiments only).

Same backbone pass as ``XsearchMini._backbone`` (``extract_features`` of the ``preprocess_image`` tensors); the map is
stored float16 as (n, 49, 1280) under ``benchmarks/_data/image/`` (git-ignored), keyed like ``image_data.py``'s cache.

    python benchmarks/spatial_data.py [--flip]      # ~1 GB per copy; 1 torch thread
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from image_data import CACHE, _key, load_pairs  # noqa: E402


def spatial_path(files: list[str], flip: bool) -> Path:
    return CACHE / f"spatial-{_key(files, flip, 'spatial7x7')}.npy"


def spatial_maps(enc, data: Path, files: list[str], flip: bool = False, batch: int = 32, log=print) -> np.ndarray:
    """(n, 49, 1280) float16 last feature maps (row-major 7x7 positions), memory-mapped from the cache."""
    import torch
    from PIL import Image

    from xsearch.media import load_image

    path = spatial_path(files, flip)
    if path.is_file():
        return np.load(path, mmap_mode="r")
    model = enc._image()
    tmp = path.with_suffix(".tmp.npy")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(files), 49, 1280))
    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        ims = [load_image(data / f) for f in files[s : s + batch]]
        if flip:
            ims = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in ims]
        x = torch.stack([enc.preprocess_image(im) for im in ims])
        with torch.inference_mode():
            x = x.to(enc.device, dtype=torch.float32, memory_format=torch.channels_last)
            fmap = model.extract_features(x).float()  # (b, 1280, 7, 7)
        out[s : s + len(ims)] = fmap.flatten(2).transpose(1, 2).cpu().numpy().astype(np.float16)
        done = s + len(ims)
        if done % (batch * 20) == 0 or done == len(files):
            log(f"spatial{' (flipped)' if flip else ''}: {done}/{len(files)} in {time.perf_counter() - t0:.0f} s")
    out.flush()
    del out
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


if __name__ == "__main__":
    import torch

    from xsearch.encoders.mini import XsearchMini

    torch.set_num_threads(1)
    data = ROOT.parent / "shared" / "data"
    enc = XsearchMini(device="cpu")
    p = load_pairs(data)
    say = lambda s: print(s, flush=True)  # noqa: E731
    spatial_maps(enc, data, p.files, log=say)
    if "--flip" in sys.argv:
        spatial_maps(enc, data, p.files, flip=True, log=say)
    say("done")
