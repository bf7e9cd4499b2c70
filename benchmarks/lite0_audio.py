"""Audio through the frozen EfficientNet-Lite0 (the ImageNet CNN xsearch-mini ships for images): features and heads.

A log-mel "image" (the 64 cached log-mel bands resized to ``--rows`` rows, low frequencies at the bottom, the top
80 dB mapped to [-1, 1] like Lite0's input range, replicated to 3 channels) goes through the frozen Lite0; per view
we keep the final 1280-channel map averaged over frequency, then mean+max over time (2560), and the same pooling of
block 10 (112 channels, stride 16: 224). Every clip gets a clean view and ``--views`` augmented ones (train_audio.py's
augmentations: crops, mixing with another clip, background noise, band-limiting, gain/shift/masks), cached in
benchmarks/_data/. A small MLP head is then trained on the cached features (symmetric InfoNCE against the frozen
MiniLM caption vectors, same captions and masking as train_audio.py) and judged on the VALIDATION groups, alone and
late-fused with a tower: normalise(a * tower(x) + (1 - a) * head(lite0(x))).

  python benchmarks/lite0_audio.py extract --rows 128 --views 3        # caches benchmarks/_data/lite0_r128.pt
  python benchmarks/lite0_audio.py train --feats benchmarks/_data/lite0_r128.pt --tower benchmarks/_data/valA
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from audio_eval import read_captions, text_embed  # noqa: E402
from real_audio import captions_of, coarse_of, mel_cache, read_rows, real_metrics  # noqa: E402
from train_audio import (NOISE_LABELS, augment, band_limit, coarse_captions, contrastive_step, crop, embed,  # noqa: E402
                         features, mix_in, synthetic_metrics)
from xsearch.encoders.audio import AudioConfig, AudioTower, Lite0Head, lite0_features, mel_image  # noqa: E402

DATA = ROOT / "benchmarks" / "_data"


@torch.inference_mode()
def lite0_pooled(model, img: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - EfficientNet
    return lite0_features(model, img)


# ---- the clips and their views -------------------------------------------------------------------
def load_clips(args: argparse.Namespace) -> tuple[list[dict], list[torch.Tensor]]:
    """Generated rows then real rows (one id space), with ``split``, caption lists, key, and their log-mels."""
    cfg = AudioConfig()
    syn_rows = read_captions(args.data)
    syn_mel = features(syn_rows, cfg, Path(args.data) / "_features.pt")
    real_rows = read_rows(args.real)
    real_mel = mel_cache(real_rows, cfg, Path(args.cache))
    clips, mels = [], []
    for r, m in zip(syn_rows, syn_mel):
        clips.append({"real": False, "split": r["split"], "fine": [r["caption"]], "coarse": coarse_captions(r),
                      "key": "syn:" + r["caption"], "label": r["label"], "row": r})
        mels.append(m)
    for r, m in zip(real_rows, real_mel):
        clips.append({"real": True, "split": r["split"], "fine": captions_of(r), "coarse": coarse_of(r),
                      "key": f"{r['source']}:{r['label']}", "label": r["label"], "row": r})
        mels.append(m)
    return clips, mels


class ViewArgs:
    """train_audio.py's augmentation settings (its defaults)."""

    p_mix, p_bg, p_phone, p_lowpass, min_frames, band_shift = 0.15, 0.3, 0.1, 0.1, 200, 3


def augmented_views(idx: list[int], mels: list[torch.Tensor], clips: list[dict], gen: torch.Generator,
                    rng: random.Random) -> tuple[torch.Tensor, list[int], list[float]]:
    """One augmented view of each clip in ``idx`` (one crop length): mels, mixing partner (-1: none), weight of the clip."""
    a, cfg = ViewArgs, AudioConfig()
    mixable = [i for i, c in enumerate(clips) if c["split"] == "train" and c["label"] not in NOISE_LABELS | {"silence", "mix"}]
    noise = [i for i, c in enumerate(clips) if c["split"] == "train" and c["label"] in NOISE_LABELS]
    length = int(torch.randint(a.min_frames, 302, (1,), generator=gen))
    x = torch.stack([crop(mels[i].float(), length, gen) for i in idx])
    n = len(idx)
    mix = torch.rand(n, generator=gen) < a.p_mix
    j = [rng.choice(mixable) for _ in range(n)]
    y = torch.stack([crop(mels[i].float(), length, gen) for i in j])
    snr = torch.rand(n, generator=gen) * 8 - 4
    x = torch.where(mix[:, None, None], mix_in(x, y, snr), x)
    w = (1 / (1 + 10 ** (-snr / 10)))
    bg = torch.rand(n, generator=gen) < a.p_bg
    y = torch.stack([crop(mels[rng.choice(noise)].float(), length, gen) for _ in range(n)])
    x = torch.where(bg[:, None, None], mix_in(x, y, torch.rand(n, generator=gen) * 22 + 3), x)
    x = augment(band_limit(x, gen, cfg, a.p_phone, a.p_lowpass), gen, a.band_shift)
    partner = [jj if m else -1 for jj, m in zip(j, mix.tolist())]
    return x, partner, [float(ww) if m else 1.0 for ww, m in zip(w, mix.tolist())]


def extract(args: argparse.Namespace) -> None:
    """Clean views of every clip but the real held-out ones, augmented views of the training and validation clips."""
    from xsearch.encoders.mini import load_efficientnet

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen, rng = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    clips, mels = load_clips(args)
    model = load_efficientnet("cpu")
    use = [i for i, c in enumerate(clips) if not (c["real"] and c["split"] == "test") and (c["real"] or not args.real_only)]
    out = Path(args.out or DATA / f"lite0_r{args.rows}.pt")
    feats, clip_of, partner, weight, view = [], [], [], [], []
    t0 = time.time()
    by_len: dict[int, list[int]] = {}
    for i in use:
        by_len.setdefault(mels[i].shape[1], []).append(i)
    for idxs in by_len.values():  # clean views: whole clips, grouped by length
        for s in range(0, len(idxs), 64):
            chunk = idxs[s : s + 64]
            feats.append(lite0_pooled(model, mel_image(torch.stack([mels[i] for i in chunk]), args.rows)).half())
            clip_of += chunk
            partner += [-1] * len(chunk)
            weight += [1.0] * len(chunk)
            view += [0] * len(chunk)
    print(f"clean views: {len(clip_of)} in {time.time() - t0:.0f}s ({len(clip_of) / (time.time() - t0):.1f}/s)", flush=True)
    train = [i for i in use if clips[i]["split"] != "test"]
    for v in range(1, args.views + 1):
        order = train[:]
        rng.shuffle(order)
        for s in range(0, len(order), 64):
            chunk = order[s : s + 64]
            x, p, w = augmented_views(chunk, mels, clips, gen, rng)
            feats.append(lite0_pooled(model, mel_image(x, args.rows)).half())
            clip_of += chunk
            partner += p
            weight += w
            view += [v] * len(chunk)
        save_feats(out, args, feats, clip_of, partner, weight, view)
        print(f"view {v}: {len(clip_of)} views in {time.time() - t0:.0f}s", flush=True)
    save_feats(out, args, feats, clip_of, partner, weight, view)


def save_feats(out: Path, args: argparse.Namespace, feats: list, clip_of: list, partner: list, weight: list,
               view: list) -> None:
    torch.save({"feat": torch.cat(feats), "clip": torch.tensor(clip_of), "partner": torch.tensor(partner),
                "weight": torch.tensor(weight), "view": torch.tensor(view), "rows": args.rows}, out)


# ---- the head ------------------------------------------------------------------------------------
def train_head(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    clips, mels = load_clips(args)
    saved = torch.load(args.feats)
    feat, clip_of, partner, weight, view = (saved[k] for k in ("feat", "clip", "partner", "weight", "view"))
    if args.dims == "head":
        feat = feat[:, :2560]
    elif args.dims == "mean":
        feat = feat[:, :1280]
    holdout = {"test", "val"} if args.holdout == "val" else {"test"}
    tr = [k for k in range(len(clip_of)) if clips[int(clip_of[k])]["split"] not in holdout
          and (args.max_view < 0 or int(view[k]) <= args.max_view) and (clips[int(clip_of[k])]["real"] or not args.no_syn)]
    uniq = sorted({c for cl in clips for c in cl["fine"] + cl["coarse"]})
    txt = torch.from_numpy(text_embed(uniq))
    col = {c: j for j, c in enumerate(uniq)}
    key_id = {k: j for j, k in enumerate(sorted({c["key"] for c in clips}))}
    keys = torch.tensor([key_id[c["key"]] for c in clips])
    head = Lite0Head(feat.shape[1], args.hidden, 384, dropout=args.dropout)
    x_tr = feat[tr].float()
    head.mu.copy_(x_tr.mean(0))
    head.sd.copy_(x_tr.std(0) + 1e-3)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW([{"params": head.parameters(), "weight_decay": args.wd},
                             {"params": [log_scale], "weight_decay": 0.0}], lr=args.lr)
    steps_per = len(tr) // args.batch
    total = args.epochs * steps_per
    step, t0 = 0, time.time()
    tower_emb = fusion_base(args, clips, mels)
    for epoch in range(args.epochs):
        head.train()
        caps = []
        for c in clips:
            use_coarse = c["coarse"] and rng.random() < (0.15 if c["real"] else 0.25)
            caps.append(col[rng.choice(c["coarse"] if use_coarse else c["fine"])])
        caps = torch.tensor(caps)
        order = tr[:]
        rng.shuffle(order)
        losses = []
        for b in range(steps_per):
            lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total))
            ks = torch.tensor(order[b * args.batch : (b + 1) * args.batch])
            ci, pj, w = clip_of[ks], partner[ks], weight[ks][:, None]
            t = txt[caps[ci]]
            mixed = pj >= 0
            t = torch.where(mixed[:, None], F.normalize(w * t + (1 - w) * txt[caps[pj.clamp(min=0)]], dim=-1), t)
            k = torch.where(mixed, -1 - torch.arange(len(ks)), keys[ci])
            losses.append(contrastive_step(opt, lr, F.normalize(head(feat[ks]), dim=-1), t, k, log_scale))
            step += 1
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            line = evaluate(head, feat, clip_of, view, clips, tower_emb, args, final=epoch + 1 == args.epochs)
            print(f"epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.3f} T={math.exp(-log_scale.item()):.3f} "
                  f"{time.time() - t0:.0f}s  {line}", flush=True)
    if args.ship:
        ship(head, args, saved["rows"])


def _without_out(argv: list[str]) -> list[str]:
    """The command line minus ``--out DIR`` (where the files went is not part of the recipe)."""
    skip = {i for i, a in enumerate(argv) if a == "--out"}
    return [a for i, a in enumerate(argv) if i not in skip and i - 1 not in skip and not a.startswith("--out=")]


def ship(head: Lite0Head, args: argparse.Namespace, rows: int) -> None:
    """The tower in ``args.ship`` (its TC-ResNet part, unchanged) + this head, fused with weight ``args.ship_alpha``:
    audio_tower.safetensors (fp16; the head's standardisation and fusion weight fp32) + JSON config into ``args.out``."""
    import json
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    src, out = Path(args.ship), Path(args.out)
    meta = json.loads((src / "audio_tower.json").read_text())
    cfg = replace(AudioConfig.from_json(json.dumps(meta)), lite0_rows=rows, lite0_hidden=args.hidden)
    tower = {k: v for k, v in load_file(str(src / "audio_tower.safetensors")).items() if not k.startswith("lite0_head.")}
    head.tower_weight.fill_(args.ship_alpha)
    state = dict(tower) | {f"lite0_head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    state = {k: v.half() if v.is_floating_point() and k.split(".")[-1] not in ("mu", "sd", "tower_weight") else v
             for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "audio_tower.safetensors"))
    (out / "audio_tower.safetensors").chmod(0o644)
    meta.pop("held_out", None)  # the tower's own numbers; the fused ones are in benchmarks/README.md
    meta |= json.loads(cfg.to_json()) | {
        "lite0_trained_with": "benchmarks/lite0_audio.py " + " ".join(_without_out(sys.argv[1:])),
        "lite0_data": f"the same clips (held out: {args.holdout} groups), {args.feats}",
    }
    (out / "audio_tower.json").write_text(json.dumps(meta, indent=2))
    AudioTower.load(out / "audio_tower.safetensors")  # round-trip check
    print(f"saved {out / 'audio_tower.safetensors'} ({(out / 'audio_tower.safetensors').stat().st_size / 1e6:.1f} MB)")


def fusion_base(args: argparse.Namespace, clips: list[dict], mels: list[torch.Tensor]) -> np.ndarray | None:
    """Whole-clip embeddings of every clip by the tower in ``args.tower`` (for late fusion), or None."""
    if not args.tower:
        return None
    tower = AudioTower.load(Path(args.tower) / "audio_tower.safetensors")
    idx = [i for i, c in enumerate(clips) if c["split"] == args.holdout or (not c["real"] and c["split"] == "test")]
    out = np.zeros((len(clips), 384), np.float32)
    out[idx] = embed(tower.net, [mels[i] for i in idx])
    return out


@torch.inference_mode()
def evaluate(head: Lite0Head, feat: torch.Tensor, clip_of: torch.Tensor, view: torch.Tensor, clips: list[dict],
             tower_emb: np.ndarray | None, args: argparse.Namespace, final: bool) -> str:
    """Validation tagging top-1 per source (and generated labels when cached), head alone and fused."""
    head.eval()
    clean = {int(clip_of[k]): k for k in (view == 0).nonzero()[:, 0].tolist()}
    ev = [i for i, c in enumerate(clips) if c["split"] == args.holdout and c["real"] and i in clean]
    sy = [i for i, c in enumerate(clips) if not c["real"] and c["split"] == "test" and i in clean]
    emb = np.zeros((len(clips), 384), np.float32)
    ids = ev + sy
    emb[ids] = F.normalize(head(feat[[clean[i] for i in ids]]), dim=-1).numpy()
    out = []
    alphas = [0.0] if tower_emb is None else args.alphas
    for a in alphas:
        e = emb if a == 0 else a * tower_emb + (1 - a) * emb
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)
        table = real_metrics(e[ev], [clips[i]["row"] for i in ev])
        if sy:
            table += synthetic_metrics(e[sy], [clips[i]["row"] for i in sy])[1:]
        out.append(f"a={a:.2f}: " + " ".join(f"{n.split(':')[-1].strip()[:8]} {m.get('tag_top1', m.get('top1')):.3f}"
                                             for n, m in table))
        if final:
            out[-1] += " | t2a R@1 " + " ".join(f"{m['t2a_R@1']:.3f}" for n, m in table if "t2a_R@1" in m)
    return "\n    ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("extract", "train"):
        p = sub.add_parser(name)
        p.add_argument("--data", default="benchmarks/_data/audio")
        p.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real-audio"))
        p.add_argument("--cache", default="benchmarks/_data/real_audio_mel.pt")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
    e = sub.choices["extract"]
    e.add_argument("--rows", type=int, default=128, help="mel-image height (the 64 bands resized)")
    e.add_argument("--views", type=int, default=3, help="augmented views per training clip (besides the clean one)")
    e.add_argument("--real-only", action="store_true")
    e.add_argument("--out", default="")
    t = sub.choices["train"]
    t.add_argument("--feats", required=True)
    t.add_argument("--holdout", choices=["test", "val"], default="val")
    t.add_argument("--tower", default="", help="folder with a tower trained without the holdout (for late fusion)")
    t.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 1.0])
    t.add_argument("--dims", choices=["all", "head", "mean"], default="all")
    t.add_argument("--max-view", type=int, default=-1)
    t.add_argument("--no-syn", action="store_true")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--hidden", type=int, default=1024)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--wd", type=float, default=0.05)
    t.add_argument("--eval-every", type=int, default=5)
    t.add_argument("--ship", default="", help="folder of the tower to fuse with: save it + this head into --out")
    t.add_argument("--ship-alpha", type=float, default=0.5, help="the tower's weight in the shipped fusion")
    t.add_argument("--out", default=str(ROOT / "xsearch" / "encoders" / "weights"))
    args = ap.parse_args()
    extract(args) if args.cmd == "extract" else train_head(args)


if __name__ == "__main__":
    main()
