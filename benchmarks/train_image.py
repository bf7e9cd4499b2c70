"""Train xsearch-mini's image head (xsearch/encoders/image_head.py) into the frozen MiniLM space.

Frozen inputs per photo (one EfficientNet-Lite0 pass, cached by ``image_data.py``): the pooled 1280-d features and
the ConSE vector of the ImageNet logits. Loss: symmetric InfoNCE against the frozen MiniLM vectors of the captions
(xsearch.train.loss.ClipLoss, learnable temperature, batches without repeated items from
xsearch.train.data.unique_batches) + ``--distill`` x KL(teacher || softmax(out . P^T / tau)) with P the MiniLM
vectors of "a photo of a {class}." for the 1000 ImageNet classes and the teacher the classifier's own class
probabilities, so ImageNet label queries and tagging keep working, + ``--col-distill`` x the same KL across the
batch's photos for each class prompt (softmax over photos of the prompt's scores vs the classifier's probabilities of
that class, for the classes that are some photo's top-1): the prompt "a photo of a {class}." ranks photos like the
classifier does, which is what an ImageNet label query needs (the per-photo term alone does not constrain it).

Experiments only: ``--attn-heads`` (with ``--attn-only``) has the MLP read learned attention pools of the 7x7 feature
map (cached by ``spatial_data.py``) next to or instead of the pooled vector (benchmarks/README.md: not better).

Data: ../shared/data/flickr8k-train (7,091 photos x 5 captions) + ../shared/data/sports100 (800 photos, captions
phrased from the label with 5 templates); horizontally flipped copies as augmentation.

``--ensemble`` heads (seeds seed, seed+1, ...) are merged into one (``image_head.merge``: the mean of their residuals),
then ``calibrate`` sets the residual's ``--residual-scale`` and a ``centre`` (``--centre-beta`` x the mean output over
the training photos); both were chosen on the held-out slice (benchmarks/README.md, *Image head*).

    # choose settings: train on all but a held-out slice (500 flickr8k-train photos + 1 photo per sport, seed 0)
    python benchmarks/train_image.py --data ../shared/data --holdout
    # rebuild the shipped weights bit for bit (all training photos, the chosen settings; CPU, 1 torch thread)
    python benchmarks/train_image.py --data ../shared/data --seed 0 --out xsearch/encoders/weights
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from spatial_data import spatial_maps  # noqa: E402
from image_data import SPORT_TEMPLATES, image_features, load_pairs, sport_name, split_images, text_features  # noqa: E402

from xsearch.encoders import image_head  # noqa: E402
from xsearch.encoders.mini import XsearchMini, conse, imagenet_classes  # noqa: E402
from xsearch.evaluate import recall_at_k, top_k_accuracy  # noqa: E402
from xsearch.train.data import unique_batches  # noqa: E402
from xsearch.train.loop import _cosine  # noqa: E402
from xsearch.train.loss import ClipLoss  # noqa: E402

TAG_PROMPT = "a photo of a {}."


class Frozen:
    """Everything the head trains on, as float32 tensors: per-image views (original, flipped) and text vectors."""

    def __init__(self, data: Path, flip: bool, inputs: tuple[str, ...], log=print, spatial: bool = False):
        enc = XsearchMini(device="cpu")
        self.p = load_pairs(data)
        views = [False, True] if flip else [False]
        classes, mean = enc._classes()
        self.feats, self.conse, self.teacher_logits, self.maps = [], [], [], []
        for v in views:
            raw = image_features(enc, data, self.p.files, flip=v, log=log)
            lg = torch.from_numpy(raw["logits"])
            self.teacher_logits.append(lg)
            self.feats.append(torch.from_numpy(np.concatenate([raw[k].astype(np.float32) for k in inputs], axis=1)))
            self.conse.append(F.normalize(conse(lg, classes, mean, enc.config), dim=-1))
            if spatial:  # (n, 49, 1280) float16 last feature maps, for attention pooling
                self.maps.append(torch.from_numpy(np.ascontiguousarray(spatial_maps(enc, data, self.p.files, v, log=log))))
        self.text = torch.from_numpy(text_features(enc, self.p.texts, log=log))
        caps: dict[int, list[int]] = {}
        for a, b in self.p.pairs:
            caps.setdefault(int(a), []).append(int(b))
        self.captions = [caps[i] for i in range(len(self.p.files))]
        probs = torch.softmax(self.teacher_logits[0], dim=1)
        conf, top = probs.max(dim=1)
        self.pseudo = torch.where(conf >= 0.5, top, torch.full_like(top, -1)).numpy()  # confident ImageNet class or -1
        self.centroid = F.normalize(torch.stack([self.text[c].mean(dim=0) for c in self.captions]), dim=-1)
        self.prompts = torch.from_numpy(text_features(enc, [TAG_PROMPT.format(c.name) for c in imagenet_classes()]))
        sports = sorted({l for l in self.p.label if l})
        self.sports = sports
        self.text_all = torch.cat([self.text, self.prompts])  # captions, then the 1000 class prompts
        self.sport_prompts = torch.from_numpy(text_features(enc, [f"a photo of {sport_name(s)}." for s in sports]))


def fmap(f: Frozen, idx, view: torch.Tensor | int = 0) -> torch.Tensor | None:
    """float32 feature maps of images ``idx`` (per-image ``view``), or None without spatial inputs."""
    if not f.maps:
        return None
    if isinstance(view, int):
        return f.maps[view][idx].float()
    return torch.where(view[:, None, None] == 1, f.maps[-1][idx], f.maps[0][idx]).float()


def embed(head, f: Frozen, idx: np.ndarray, view: int = 0, unnormalised: bool = False) -> torch.Tensor:
    """The head's output for images ``idx`` (in chunks: feature maps are large)."""
    head.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), 512):
            i = idx[s : s + 512]
            fn = head.unnormalised if unnormalised else head
            out.append(fn(f.feats[view][i], f.conse[view][i], fmap(f, i, view)))
    return torch.cat(out)


def evaluate(vec: torch.Tensor, f: Frozen, idx: np.ndarray) -> dict[str, float]:
    """Held-out metrics for image vectors ``vec`` of images ``idx`` (flickr captions, sports labels, ImageNet proxy)."""
    out: dict[str, float] = {}
    v = vec.numpy()
    src = f.p.source[idx]
    fl = np.flatnonzero(src == 0)
    pos = {int(i): k for k, i in enumerate(idx[fl])}
    cap_pairs = [(pos[a], b) for a, b in f.p.pairs if int(a) in pos]
    caps = np.array(sorted({b for _, b in cap_pairs}))
    cap_row = {c: r for r, c in enumerate(caps)}
    gt = np.zeros(len(caps), np.int64)
    rel: list[list[int]] = [[] for _ in fl]
    for a, b in cap_pairs:
        gt[cap_row[b]] = a
        rel[a].append(cap_row[b])
    sim = f.text[caps].numpy() @ v[fl].T
    t2i, i2t = recall_at_k(sim, gt, (1, 5, 10)), recall_at_k(sim.T, [np.array(r) for r in rel], (1, 5))
    out.update({"flickr t2i R@1": t2i[1], "flickr t2i R@5": t2i[5], "flickr t2i R@10": t2i[10],
                "flickr i2t R@1": i2t[1], "flickr i2t R@5": i2t[5]})
    # flickr-dev's size: mean over 200-photo subsets (fixed seed)
    rng = np.random.default_rng(123)
    r1 = []
    for _ in range(10):
        sub = np.sort(rng.choice(len(fl), min(200, len(fl)), replace=False))
        rows = np.isin(gt, sub)
        r1.append(recall_at_k(sim[rows][:, sub], np.searchsorted(sub, gt[rows]), (1,))[1])
    out["flickr t2i R@1 (200-photo subsets)"] = float(np.mean(r1))
    sp = np.flatnonzero(src == 1)
    if len(sp):
        lab = np.array([f.sports.index(f.p.label[i]) for i in idx[sp]])
        ssim = f.sport_prompts.numpy() @ v[sp].T
        out["sports tag top-1"] = top_k_accuracy(ssim.T, lab, (1,))[1]
        out["sports label->photo R@1"] = recall_at_k(ssim[lab], np.arange(len(sp)), (1,))[1]
    # ImageNet proxy: photos the classifier is confident about; tagging agreement and label-query R@1
    probs = torch.softmax(f.teacher_logits[0][idx], dim=1)
    conf, top = probs.max(dim=1)
    sure = np.flatnonzero(conf.numpy() >= 0.5)
    tags = v[sure] @ f.prompts.numpy().T
    out["imagenet proxy tag agree top-1"] = float(np.mean(tags.argmax(1) == top.numpy()[sure]))
    _, first = np.unique(top.numpy()[sure], return_index=True)
    one = sure[np.sort(first)]  # one confident photo per class
    q = f.prompts[top[one]].numpy() @ v[one].T
    out["imagenet proxy label R@1"] = recall_at_k(q, np.arange(len(one)), (1,))[1]
    # harder: each confident class's prompt against all held-out photos (any photo of that class counts)
    cls = np.unique(top.numpy()[sure])
    rel = [sure[top.numpy()[sure] == c] for c in cls]
    out["imagenet proxy label R@1, all photos"] = recall_at_k(f.prompts[cls].numpy() @ v.T, rel, (1,))[1]
    out["n flickr / sports / proxy photos"] = f"{len(fl)} / {len(sp)} / {len(one)}"  # type: ignore[assignment]
    return out


SUMMARY = ("flickr t2i R@1 (200-photo subsets)", "flickr i2t R@1", "sports tag top-1", "imagenet proxy label R@1, all photos")


def summary(m: dict[str, float]) -> str:
    """t2i R@1 (200-photo subsets) / i2t R@1 / sports tag top-1 / all-photos proxy R@1."""
    return " / ".join(f"{m[k]:.3f}" for k in SUMMARY)


def train(f: Frozen, train_idx: np.ndarray, args, log=print, val_idx: np.ndarray | None = None) -> image_head.ImageHead:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    head = image_head.ImageHead(f.feats[0].shape[1], args.hidden, dropout=args.dropout, attn_heads=args.attn_heads,
                                pooled_input=not args.attn_only)
    loss_fn = ClipLoss(args.temperature)
    opt = torch.optim.AdamW([{"params": [p for n, p in head.named_parameters() if n != "prior"],
                              "weight_decay": args.weight_decay},
                             {"params": [head.prior, loss_fn.logit_scale], "weight_decay": 0.0}], lr=args.lr)
    caps = f.captions
    steps_per_epoch = int(np.ceil(len(train_idx) / args.batch_size)) + 1
    total, step = steps_per_epoch * args.epochs, 0
    views = len(f.feats)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        head.train()
        chosen = np.array([[i, caps[i][int(rng.integers(len(caps[i])))]] for i in train_idx], dtype=np.int64)
        if args.class_pairs > 0:  # some confident photos get their ImageNet class prompt as this epoch's caption
            swap = (f.pseudo[train_idx] >= 0) & (rng.random(len(train_idx)) < args.class_pairs)
            chosen[swap, 1] = len(f.p.texts) + f.pseudo[train_idx][swap]
        losses = []
        for batch in unique_batches(chosen, args.batch_size, rng):
            step += 1
            if len(batch) < 2:
                continue
            for g in opt.param_groups:
                g["lr"] = _cosine(args.lr, 0.0, step, total) * min(1.0, step / args.warmup)
            img, txt = chosen[batch, 0], chosen[batch, 1]
            view = torch.randint(views, (len(img),), generator=gen)
            ti = torch.as_tensor(img)
            x = torch.where(view[:, None] == 1, f.feats[-1][ti], f.feats[0][ti])
            c = torch.where(view[:, None] == 1, f.conse[-1][ti], f.conse[0][ti])
            y = head(x, c, fmap(f, ti, view))
            t = f.text_all[torch.as_tensor(txt)]
            if args.centroid > 0:
                use = (torch.rand(len(img), generator=gen) < args.centroid) & torch.as_tensor(txt < len(f.p.texts))
                t = torch.where(use[:, None], f.centroid[ti], t)
            loss = loss_fn(y, t)
            if args.distill > 0:
                logits = torch.where(view[:, None] == 1, f.teacher_logits[-1][ti], f.teacher_logits[0][ti])
                teacher = torch.softmax(logits / args.teacher_temp, dim=1)
                student = torch.log_softmax(y @ f.prompts.T / args.distill_tau, dim=1)
                loss = loss + args.distill * F.kl_div(student, teacher, reduction="batchmean")
            if args.col_distill > 0:  # per class prompt, rank the batch's photos like the classifier does
                logits = torch.where(view[:, None] == 1, f.teacher_logits[-1][ti], f.teacher_logits[0][ti])
                lp = torch.log_softmax(logits / args.teacher_temp, dim=1)
                top, arg = lp.max(dim=1)
                cls = torch.unique(arg[top >= np.log(args.col_min_conf)]) if args.col_min_conf > 0 else torch.unique(arg)
                tcol = torch.softmax(lp[:, cls], dim=0)
                scol = torch.log_softmax(y @ f.prompts[cls].T / args.distill_tau, dim=0)
                loss = loss + args.col_distill * F.kl_div(scol, tcol, reduction="sum") / max(len(cls), 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        msg = f"epoch {epoch}: loss {np.mean(losses):.4f} temp {1 / loss_fn.scale().item():.4f} " \
              f"prior {head.prior.item():.3f} ({time.perf_counter() - t0:.0f} s)"
        if val_idx is not None and (epoch % args.eval_every == 0 or epoch == args.epochs):
            m = evaluate(embed(head, f, val_idx), f, val_idx)
            msg += " | " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        log(msg)
    return head.eval()


def calibrate(head: image_head.ImageHead, f: Frozen, train_idx: np.ndarray, scale: float, beta: float) -> None:
    """Residual ``scale`` and ``centre`` = ``beta`` x the mean unnormalised output over the training photos."""
    head.eval()
    head.calibrate(scale, torch.zeros_like(head.centre))
    with torch.no_grad():
        mean = embed(head, f, train_idx, unnormalised=True).mean(dim=0)
    head.calibrate(scale, (beta * mean).half().float())


def rounded(head: image_head.ImageHead) -> image_head.ImageHead:
    """The head with its weights rounded to float16, as shipped."""
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(p.half().float())
    return head


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="write image_head.safetensors/.json here")
    ap.add_argument("--holdout", action="store_true", help="train without the held-out slice and report on it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--temperature", type=float, default=0.05, help="initial InfoNCE temperature (learned)")
    ap.add_argument("--distill", type=float, default=1.0, help="weight of the ImageNet distillation term")
    ap.add_argument("--distill-tau", type=float, default=0.02)
    ap.add_argument("--teacher-temp", type=float, default=1.0)
    ap.add_argument("--col-distill", type=float, default=0.15,
                    help="weight of the across-photos term: each class prompt ranks the batch's photos like the classifier")
    ap.add_argument("--col-min-conf", type=float, default=0.0,
                    help="only class prompts some photo in the batch has at least this top probability for")
    ap.add_argument("--attn-heads", type=int, default=0,
                    help="attention-pooling queries over the 7x7 feature map, read next to the pooled vector")
    ap.add_argument("--attn-only", action="store_true", help="the MLP reads the attention pools, not the pooled vector")
    ap.add_argument("--sweep", default="", help="held-out only: extra 'scale:beta,...' calibrations to report")
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--inputs", default="pooled", help="experiments only: comma-separated frozen views the MLP reads "
                    "(pooled, max, grid, block10, block14, block15)")
    ap.add_argument("--class-pairs", type=float, default=0.15,
                    help="per epoch, this fraction of confidently classified photos is paired with its class prompt")
    ap.add_argument("--centroid", type=float, default=0.0,
                    help="fraction of samples trained against the mean of the photo's captions")
    ap.add_argument("--ensemble", type=int, default=2, help="train this many heads (seeds seed, seed+1, ...) and "
                    "ship one head computing the mean of their residuals")
    ap.add_argument("--residual-scale", type=float, default=0.8,
                    help="after training: the residual's weight against ConSE (1 = as trained)")
    ap.add_argument("--centre-beta", type=float, default=0.5,
                    help="after training: subtract this fraction of the mean training output before normalising")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=5)
    args = ap.parse_args(argv)
    args.inputs = tuple(args.inputs.split(","))
    if args.out and args.inputs != ("pooled",):
        ap.error("--inputs other than 'pooled' are for experiments only (xsearch-mini's head reads pooled features)")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    f = Frozen(args.data, not args.no_flip, args.inputs, log=log, spatial=args.attn_heads > 0)
    all_idx = np.arange(len(f.p.files))
    val_mask = split_images(f.p, args.split_seed)
    train_idx = all_idx[~val_mask] if args.holdout else all_idx
    val_idx = all_idx[val_mask] if args.holdout else None
    log(f"{len(train_idx)} training photos, {len(f.p.texts)} texts; features ready in {time.perf_counter() - t0:.0f} s")
    heads = []
    for k in range(args.ensemble):
        args.seed, seed = args.seed + k, args.seed
        heads.append(train(f, train_idx, args, log, val_idx))
        args.seed = seed
    head = rounded(image_head.merge(heads))
    calibrate(head, f, train_idx, args.residual_scale, args.centre_beta)
    if val_idx is not None:
        base, new = evaluate(f.conse[0][val_idx], f, val_idx), evaluate(embed(head, f, val_idx), f, val_idx)
        print("\n| held-out metric | ConSE only | trained head |\n|---|---|---|")
        for k in base:
            fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
            print(f"| {k} | {fmt(base[k])} | {fmt(new[k])} |")
        for sb in [x for x in args.sweep.split(",") if x]:
            sc, be = (float(x) for x in sb.split(":"))
            calibrate(head, f, train_idx, sc, be)
            log(f"calibration s {sc} beta {be}: {summary(evaluate(embed(head, f, val_idx), f, val_idx))}")
        calibrate(head, f, train_idx, args.residual_scale, args.centre_beta)
    if args.out:
        keep = ("seed", "epochs", "batch_size", "lr", "warmup", "weight_decay", "dropout", "temperature", "distill",
                "distill_tau", "teacher_temp", "col_distill", "col_min_conf", "attn_heads", "attn_only", "no_flip", "centroid", "class_pairs", "ensemble", "residual_scale", "centre_beta", "inputs", "hidden", "holdout", "split_seed")
        extra = {"trained_on": ["flickr8k-train (Flickr8k terms, research use)",
                                "sports100 (licence not stated, research use)"],
                 "sport_templates": list(SPORT_TEMPLATES), "training": {k: getattr(args, k) for k in keep},
                 "command": "python benchmarks/train_image.py --data ../shared/data --seed 0 --out xsearch/encoders/weights"}
        for path in image_head.save(head, args.out, extra):
            log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})")
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
