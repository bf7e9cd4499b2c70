"""Training data of xsearch-mini's image head: pairs, splits and cached frozen features (not part of the package).

Frozen features are computed once and cached under ``benchmarks/_data/image/`` (git-ignored), keyed by the file
list and the model files, so a training run only reads them:

- images: EfficientNet-Lite0 ImageNet logits (1000) and global-pooled features (1280), from the same
  ``XsearchMini.preprocess_image`` tensors that ingest feeds the model (optionally horizontally flipped);
- texts: frozen all-MiniLM-L6-v2 vectors (384) of the captions and prompts.
"""
from __future__ import annotations

import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_data" / "image"

# sports100 labels as the source spells them -> the words a person would type
SPORT_NAMES = {
    "ampute football": "amputee football", "barell racing": "barrel racing", "canoe slamon": "canoe slalom",
    "figure skating men": "men's figure skating", "figure skating pairs": "pairs figure skating",
    "figure skating women": "women's figure skating", "formula 1 racing": "formula 1 racing",
    "gaga": "gaga ball", "nascar racing": "NASCAR racing", "snow boarding": "snowboarding",
    "track bicycle": "track cycling", "water cycling": "water cycling", "ultimate": "ultimate frisbee",
    "rings": "gymnastics on the rings", "parallel bar": "gymnastics on the parallel bars",
    "uneven bars": "gymnastics on the uneven bars", "pommel horse": "gymnastics on the pommel horse",
    "balance beam": "gymnastics on the balance beam", "bmx": "BMX", "jai alai": "jai alai",
}
# caption templates phrased from a sport label (each training photo gets all of them as its captions)
SPORT_TEMPLATES = (
    "a photo of {}.", "people playing {}.", "a person doing {}.", "an athlete competing in {}.", "{}.",
)


@dataclass
class Pairs:
    """Images (relative file names), texts, and (image index, text index) pairs, plus a per-image group."""

    files: list[str]
    texts: list[str]
    pairs: np.ndarray  # (m, 2) int64
    source: np.ndarray  # per image: 0 flickr8k-train, 1 sports100
    label: list[str]  # per image: sport label ("" for flickr)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sport_name(label: str) -> str:
    return SPORT_NAMES.get(label, label)


def load_pairs(data: Path) -> Pairs:
    """flickr8k-train (5 captions per photo) + sports100 (captions phrased from the label)."""
    files: list[str] = []
    texts: list[str] = []
    pairs: list[tuple[int, int]] = []
    source: list[int] = []
    label: list[str] = []
    index: dict[str, int] = {}
    text_index: dict[str, int] = {}

    def add(file: str, caption: str, src: int, lab: str) -> None:
        if file not in index:
            index[file] = len(files)
            files.append(file)
            source.append(src)
            label.append(lab)
        if caption not in text_index:
            text_index[caption] = len(texts)
            texts.append(caption)
        pairs.append((index[file], text_index[caption]))

    for r in read_csv(data / "flickr8k-train" / "captions.csv"):
        add(f"flickr8k-train/{r['file']}", r["caption"].strip(), 0, "")
    for r in read_csv(data / "sports100" / "labels.csv"):
        for t in SPORT_TEMPLATES:
            add(f"sports100/{r['file']}", t.format(sport_name(r["label"])), 1, r["label"])
    return Pairs(files, texts, np.array(pairs, dtype=np.int64), np.array(source), label)


def split_images(p: Pairs, seed: int, n_flickr_val: int = 500) -> np.ndarray:
    """Boolean mask of held-out images: ``n_flickr_val`` flickr8k-train photos and one photo per sport."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(p.files), dtype=bool)
    flickr = np.flatnonzero(p.source == 0)
    val[rng.choice(flickr, n_flickr_val, replace=False)] = True
    by_sport: dict[str, list[int]] = {}
    for i in np.flatnonzero(p.source == 1):
        by_sport.setdefault(p.label[i], []).append(int(i))
    for idx in by_sport.values():
        val[idx[int(rng.integers(len(idx)))]] = True
    return val


def _key(*parts: object) -> str:
    from xsearch.encoders.mini import efficientnet_path, minilm_path

    h = hashlib.sha256(repr(parts).encode())
    for path in (efficientnet_path(), minilm_path() / "model.safetensors"):
        if path.is_file():
            h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


EXTRA_BLOCKS = (10, 14, 15)  # EfficientNet-Lite0 blocks whose outputs (112@14x14, 192@7x7, 320@7x7) are pooled too


def backbone_all(enc, x) -> dict[str, np.ndarray]:
    """One pass of xsearch-mini's backbone (same ops as ``XsearchMini._backbone``) keeping extra pooled views."""
    import torch

    model = enc._image()
    seen: dict[int, torch.Tensor] = {}
    hooks = [model._blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i in EXTRA_BLOCKS]
    try:
        with torch.inference_mode():
            x = x.to(enc.device, dtype=torch.float32, memory_format=torch.channels_last)
            fmap = model.extract_features(x)
            pooled = fmap.mean(dim=(2, 3))
            out = {"logits": model._fc(pooled).float(), "pooled": pooled.float(), "max": fmap.amax(dim=(2, 3)),
                   "grid": torch.nn.functional.adaptive_avg_pool2d(fmap, 2).flatten(1)}
            for i in EXTRA_BLOCKS:
                out[f"block{i}"] = seen[i].mean(dim=(2, 3))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def image_features(enc, data: Path, files: list[str], flip: bool = False, batch: int = 64,
                   log=print) -> dict[str, np.ndarray]:
    """Per image: logits (1000), pooled (1280) float32 and extra views (float16) for ``files``, cached on disk."""
    from PIL import Image

    from xsearch.media import load_image

    path = CACHE / f"images2-{_key(files, flip, EXTRA_BLOCKS)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    parts: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        ims = [load_image(data / f) for f in files[s : s + batch]]
        if flip:
            ims = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in ims]
        import torch

        feats = backbone_all(enc, torch.stack([enc.preprocess_image(im) for im in ims]))
        for k, v in feats.items():
            parts.setdefault(k, []).append(v if k in ("logits", "pooled") else v.astype(np.float16))
        done = min(s + batch, len(files))
        if done % (batch * 10) == 0 or done == len(files):
            log(f"images{' (flipped)' if flip else ''}: {done}/{len(files)} in {time.perf_counter() - t0:.0f} s")
    out = {k: np.concatenate(v) for k, v in parts.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def text_features(enc, texts: list[str], log=print) -> np.ndarray:
    """Frozen MiniLM vectors (n, 384) of ``texts``, cached on disk."""
    path = CACHE / f"texts-{_key(texts)}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    out = enc.encode_text(texts, batch_size=256)
    log(f"texts: {len(texts)} in {time.perf_counter() - t0:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


if __name__ == "__main__":  # warm the cache: python benchmarks/image_data.py [--flip]
    import sys

    import torch

    sys.path.insert(0, str(ROOT))
    from xsearch.encoders.mini import XsearchMini

    torch.set_num_threads(2)
    data = ROOT.parent / "shared" / "data"
    enc = XsearchMini(device="cpu")
    p = load_pairs(data)
    print(f"{len(p.files)} images, {len(p.texts)} texts, {len(p.pairs)} pairs", flush=True)
    image_features(enc, data, p.files, log=lambda s: print(s, flush=True))
    text_features(enc, p.texts, log=lambda s: print(s, flush=True))
    if "--flip" in sys.argv:
        image_features(enc, data, p.files, flip=True, log=lambda s: print(s, flush=True))
    print("done", flush=True)
