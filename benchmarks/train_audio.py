"""Train the xsearch audio tower LiT-style: audio CNN -> frozen MiniLM caption embeddings, symmetric InfoNCE.

Data: real recordings (../shared/data/real-audio: UrbanSound8K, Kitchen20, Speech Commands; captions phrased from
the labels in real_audio.py; held-out groups never trained on) together with the synthetic set of
benchmarks/make_audio_data.py (its own train/test split). Augmentations in the log-mel domain: random crops,
real clips mixed with each other (the caption target is the power-weighted mix of both caption embeddings),
background mixing with noise (synthetic noise colours and real background recordings), band-limiting (telephone
300-3400 Hz, low-pass like low-bitrate files), gain, time shift, mel-band shift and spec-augment masks.
Prints the held-out tables and saves fp16 weights + JSON config into the package (xsearch/encoders/weights/).

Reproduce the shipped weights bit for bit (1 torch thread, the default; the data step needs
apt-get install -y --no-install-recommends espeak-ng flite sox fluidsynth fluid-soundfont-gm):
  python benchmarks/make_audio_data.py --out benchmarks/_data/audio --seed 0
  python benchmarks/train_audio.py --data benchmarks/_data/audio --real ../shared/data/real-audio --seed 0
``--holdout val`` also holds out the validation groups and reports on them (how the settings were chosen);
``--eval-every 2`` prints their tagging top-1 every 2 epochs; ``--balance 0.5`` draws real labels ~sqrt-balanced.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from audio_eval import label_matrix, print_table, read_captions, retrieval, text_embed, zero_shot  # noqa: E402
from real_audio import captions_of, coarse_of, mel_cache, read_rows, real_metrics  # noqa: E402
from xsearch.encoders.audio import (  # noqa: E402
    WEIGHTS_DIR, AudioConfig, AudioNet, AudioTower, _hz_to_mel, _mel_to_hz, log_mel, normalize_loudness)

NOISE_LABELS = {"white noise", "pink noise", "brown noise", "background noise"}


def features(rows: list[dict], cfg: AudioConfig, cache: Path) -> torch.Tensor:
    """(n, n_mels, frames) float16 log-mels of the generated clips (one window each: clips are shorter than window_s)."""
    stamp = max(Path(r["path"]).stat().st_mtime_ns for r in rows)  # changes when the data is generated again
    key = f"{len(rows)}-{cfg.n_mels}-{cfg.n_fft}-{cfg.hop_length}-{cfg.target_rms}-{rows[-1]['file']}-{stamp}"
    if cache.exists():
        saved = torch.load(cache)
        if saved["key"] == key:
            return saved["mel"]
    mels = []
    for s in range(0, len(rows), 256):
        waves = []
        for r in rows[s : s + 256]:
            wave, sr = sf.read(r["path"], dtype="float32")
            assert sr == cfg.sample_rate, r["path"]
            waves.append(normalize_loudness(wave, cfg.target_rms))
        mels.append(log_mel(torch.from_numpy(np.stack(waves)), cfg).half())
    mel = torch.cat(mels)
    torch.save({"key": key, "mel": mel}, cache)
    return mel


def coarse_captions(row: dict) -> list[str]:
    """Label-level captions a generated clip may be trained with instead of its detailed one."""
    label, cap = row["label"], row["caption"]
    if label == "speech":
        who = "woman" if any(w in cap for w in ("woman", "girl", "female")) else "man" if any(
            w in cap for w in ("man", "boy", "male")) else "person"
        return [f"a {who} speaking", "someone talking", "speech", "a person saying a word", "spoken words", "a voice"]
    if label == "mix" or row["kind"] == "mix":
        return []
    art = ("an " if label[0] in "aeiou" else "a ") + label
    return [label, f"the sound of {art}"]


# ---- the training pool ---------------------------------------------------------------------------
class Pool:
    """Every training clip: its log-mel, caption choices, label key, and whether it can serve as background."""

    def __init__(self) -> None:
        self.mel: list[torch.Tensor] = []
        self.fine: list[list[str]] = []
        self.coarse: list[list[str]] = []
        self.key: list[str] = []
        self.real: list[bool] = []
        self.noise: list[int] = []  # indices usable as background noise
        self.mixable: list[int] = []  # indices usable as the second sound of a mixture

    def add(self, mel: torch.Tensor, fine: list[str], coarse: list[str], key: str, real: bool, label: str) -> None:
        i = len(self.mel)
        self.mel.append(mel)
        self.fine.append(fine)
        self.coarse.append(coarse)
        self.key.append(key)
        self.real.append(real)
        if label in NOISE_LABELS:
            self.noise.append(i)
        elif label not in ("silence", "mix"):
            self.mixable.append(i)


def build_pool(syn_rows: list[dict], syn_mel: torch.Tensor, real_rows: list[dict], real_mel: list[torch.Tensor],
               holdout: set[str]) -> Pool:
    pool = Pool()
    for r, m in zip(syn_rows, syn_mel):
        if r["split"] == "train":
            pool.add(m, [r["caption"]], coarse_captions(r), "syn:" + r["caption"], False, r["label"])
    for r, m in zip(real_rows, real_mel):
        if r["split"] not in holdout:
            pool.add(m, captions_of(r), coarse_of(r), f"{r['source']}:{r['label']}", True, r["label"])
    return pool


# ---- augmentation (log-mel domain) ---------------------------------------------------------------
def crop(m: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """A ``length``-frame crop: half the time around the loudest 0.25 s, else anywhere."""
    t = m.shape[1]
    if t <= length:
        return m
    if torch.rand(1, generator=gen).item() < 0.5:
        energy = F.avg_pool1d(m.float().mean(dim=0, keepdim=True)[None], 25, 1, 12, count_include_pad=False)[0, 0]
        center = int(energy.argmax())
        offset = int((torch.rand(1, generator=gen).item() * 0.6 + 0.2) * length)
        start = min(max(center - offset, 0), t - length)
    else:
        start = int(torch.randint(0, t - length + 1, (1,), generator=gen))
    return m[:, start : start + length]


def mix_in(x: torch.Tensor, y: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Log-mel of the power sum of x and y, y scaled ``snr_db`` below x (both loudness-normalised)."""
    return torch.logaddexp(x, y - snr_db[:, None, None] * math.log(10) / 10)


def band_limit(x: torch.Tensor, gen: torch.Generator, cfg: AudioConfig, p_phone: float, p_lowpass: float) -> torch.Tensor:
    """Telephone band (300-3400 Hz) or a low-pass (2.5-7 kHz, like low-bitrate files): bands outside drop ~40 dB."""
    b, m, _ = x.shape
    centers = torch.from_numpy(_mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), m + 2))[1:-1]).float()
    r = torch.rand(b, generator=gen)
    cut = torch.rand(b, generator=gen) * 4500 + 2500
    phone = (r < p_phone)[:, None] & ((centers[None] < 300) | (centers[None] > 3400))
    low = ((r >= p_phone) & (r < p_phone + p_lowpass))[:, None] & (centers[None] > cut[:, None])
    mask = (phone | low)[:, :, None]
    floor = x.amin(dim=(1, 2), keepdim=True)
    return torch.where(mask, torch.maximum(x - 9.0, floor), x)


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Gain offset (+-6.5 dB), mel-band shift, circular time shift, two time and two frequency masks."""
    b, m, t = x.shape
    if max_shift:
        shift = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
        idx = (torch.arange(m)[None] - shift[:, None]).clamp(0, m - 1)
        x = torch.gather(x, 1, idx[:, :, None].expand(b, m, t))
    x = x + (torch.rand(b, 1, 1, generator=gen) * 3 - 1.5)
    shift = torch.randint(-t // 4, t // 4 + 1, (b,), generator=gen)
    idx = (torch.arange(t)[None] - shift[:, None]) % t
    x = torch.gather(x, 2, idx[:, None].expand(b, m, t))
    floor = x.amin(dim=(1, 2), keepdim=True)
    for size, axis, length in ((t // 12, 2, t), (8, 1, m), (t // 12, 2, t), (8, 1, m)):
        w = torch.randint(0, size + 1, (b,), generator=gen)
        s = (torch.rand(b, generator=gen) * (length - w)).long()
        ar = torch.arange(length)[None]
        mask = (ar >= s[:, None]) & (ar < (s + w)[:, None])
        mask = mask[:, None, :] if axis == 2 else mask[:, :, None]
        x = torch.where(mask, floor, x)
    return x


def make_batch(pool: Pool, idx: list[int], caps: list[int], txt: torch.Tensor, keys: list[int], gen: torch.Generator,
               rng: random.Random, cfg: AudioConfig, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(augmented log-mels, target text vectors, label keys; -1-based unique keys for mixtures)."""
    length = int(torch.randint(args.min_frames, 302, (1,), generator=gen))
    x = torch.stack([crop(pool.mel[i].float(), length, gen) for i in idx])
    t = txt[[caps[i] for i in idx]].clone()
    k = torch.tensor([keys[i] for i in idx])
    n = len(idx)
    mix = torch.rand(n, generator=gen) < args.p_mix
    if mix.any():
        j = [rng.choice(pool.mixable) for _ in range(n)]
        y = torch.stack([crop(pool.mel[i].float(), length, gen) for i in j])
        snr = torch.rand(n, generator=gen) * 8 - 4
        w = (1 / (1 + 10 ** (-snr / 10)))[:, None]
        x = torch.where(mix[:, None, None], mix_in(x, y, snr), x)
        t = torch.where(mix[:, None], F.normalize(w * t + (1 - w) * txt[[caps[i] for i in j]], dim=-1), t)
        k = torch.where(mix, -1 - torch.arange(n), k)
    bg = torch.rand(n, generator=gen) < args.p_bg
    if bg.any():
        y = torch.stack([crop(pool.mel[rng.choice(pool.noise)].float(), length, gen) for _ in range(n)])
        snr = torch.rand(n, generator=gen) * 22 + 3
        x = torch.where(bg[:, None, None], mix_in(x, y, snr), x)
    x = band_limit(x, gen, cfg, args.p_phone, args.p_lowpass)
    return augment(x, gen, args.band_shift), t, k


def masked_infonce(a: torch.Tensor, t: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where other clips of the same label (or an identical caption) are not negatives."""
    logits = scale * a @ t.t()
    n = len(keys)
    eye = torch.eye(n, dtype=torch.bool)
    same = ((keys[:, None] == keys[None, :]) | (t @ t.t() > 0.999)) & ~eye
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def contrastive_step(opt: torch.optim.Optimizer, lr: float, a: torch.Tensor, t: torch.Tensor, keys: torch.Tensor,
                     log_scale: torch.Tensor) -> float:
    """One optimiser step at ``lr`` on ``masked_infonce`` of unit audio vectors ``a`` vs caption vectors ``t``
    (temperature capped at 1/100); returns the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = masked_infonce(a, t, keys, log_scale.clamp(max=math.log(100)).exp())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def real_draws(real_i: list[int], keys: list[int], repeat: int, balance: float, rng: random.Random) -> list[int]:
    """One epoch's real clips: each ``repeat`` times, or (balance > 0) the same total with a label of n clips drawn
    in proportion to n^(1-balance), cycling through its clips in a fresh order (balance 1: every label equally)."""
    if not balance:
        return real_i * repeat
    by_key: dict[int, list[int]] = {}
    for i in real_i:
        by_key.setdefault(keys[i], []).append(i)
    weight = {k: len(v) ** (1 - balance) for k, v in by_key.items()}
    total = len(real_i) * repeat / sum(weight.values())
    out = []
    for k, clips in sorted(by_key.items()):
        rng.shuffle(clips)
        out += [clips[j % len(clips)] for j in range(round(weight[k] * total))]
    return out


# ---- evaluation ----------------------------------------------------------------------------------
@torch.inference_mode()
def embed(net: AudioNet, mels: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
    """Unit embeddings of whole clips (same-length clips batched)."""
    net.eval()
    out = torch.zeros(len(mels), net.cfg.dim)
    by_len: dict[int, list[int]] = {}
    for i, m in enumerate(mels):
        by_len.setdefault(m.shape[-1], []).append(i)
    for idxs in by_len.values():
        for s in range(0, len(idxs), 256):
            chunk = idxs[s : s + 256]
            out[chunk] = net(torch.stack([mels[i] for i in chunk]).float())
    return F.normalize(out, dim=-1).numpy()


def synthetic_metrics(emb: np.ndarray, rows: list[dict]) -> list[tuple[str, dict]]:
    """Held-out generated split: caption retrieval and zero-shot labels (as before)."""
    caps = [r["caption"] for r in rows]
    labels = sorted({r["label"] for r in rows if r["label"] != "mix"})
    keep = [i for i, r in enumerate(rows) if r["label"] != "mix"]
    zs = zero_shot(emb[keep], [rows[i]["label"] for i in keep], labels, label_matrix(labels))
    return [("generated: retrieval", retrieval(emb, caps)), ("generated: labels", zs)]


# ---- training ------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = AudioConfig()
    t0 = time.time()
    syn_rows = read_captions(args.data)
    syn_mel = features(syn_rows, cfg, Path(args.data) / "_features.pt")
    real_rows = read_rows(args.real)
    real_mel = mel_cache(real_rows, cfg, Path(args.cache))
    holdout = {"test", "val"} if args.holdout == "val" else {"test"}
    pool = build_pool(syn_rows, syn_mel, real_rows, real_mel, holdout)
    uniq = sorted({c for cs in pool.fine + pool.coarse for c in cs})
    txt = torch.from_numpy(text_embed(uniq))
    col = {c: j for j, c in enumerate(uniq)}
    key_id = {k: j for j, k in enumerate(sorted(set(pool.key)))}
    keys = [key_id[k] for k in pool.key]
    n = len(pool.mel)
    print(f"pool {n} clips ({sum(pool.real)} real), {len(uniq)} captions, {time.time() - t0:.0f}s", flush=True)
    net = AudioNet(cfg)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [{"params": net.parameters(), "weight_decay": 0.02}, {"params": [log_scale], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=args.lr)
    real_i = [i for i in range(n) if pool.real[i]]
    syn_i = [i for i in range(n) if not pool.real[i]]
    n_syn = int(len(syn_i) * args.syn_frac)
    per_epoch = (len(real_i) * args.real_repeat + n_syn) // args.batch
    total, step = args.epochs * per_epoch, 0
    for epoch in range(args.epochs):
        net.train()
        t_ep, losses = time.time(), []
        caps = []
        for i in range(n):
            use_coarse = pool.coarse[i] and rng.random() < (args.coarse if not pool.real[i] else args.coarse_real)
            caps.append(col[rng.choice(pool.coarse[i] if use_coarse else pool.fine[i])])
        rng.shuffle(syn_i)
        order = real_draws(real_i, keys, args.real_repeat, args.balance, rng) + syn_i[:n_syn]  # fresh synthetic subset
        rng.shuffle(order)
        for b in range(per_epoch):
            lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
            x, t, k = make_batch(pool, order[b * args.batch : (b + 1) * args.batch], caps, txt, keys, gen, rng, cfg, args)
            losses.append(contrastive_step(opt, lr, F.normalize(net(x), dim=-1), t, k, log_scale))
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.3f} T={math.exp(-log_scale.item()):.3f} "
              f"{time.time() - t_ep:.0f}s", flush=True)
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            evaluate(net, real_rows, real_mel, syn_rows, syn_mel, args.holdout, quiet=True)
    table = evaluate(net, real_rows, real_mel, syn_rows, syn_mel, args.holdout)
    print(f"trained in {time.time() - t0:.0f}s")
    save(net, cfg, args, table)


def evaluate(net: AudioNet, real_rows: list[dict], real_mel: list[torch.Tensor], syn_rows: list[dict],
             syn_mel: torch.Tensor, split: str, quiet: bool = False) -> list[tuple[str, dict]]:
    """Real held-out groups of ``split`` per source, and the generated test split."""
    ri = [i for i, r in enumerate(real_rows) if r["split"] == split]
    si = [i for i, r in enumerate(syn_rows) if r["split"] == "test"]
    table = real_metrics(embed(net, [real_mel[i] for i in ri]), [real_rows[i] for i in ri])
    table += synthetic_metrics(embed(net, syn_mel[si]), [syn_rows[i] for i in si])
    if quiet:
        print("  " + "; ".join(f"{name} {m.get('tag_top1', m.get('top1', m.get('t2a_R@1'))):.3f}" for name, m in table), flush=True)
    else:
        print_table(f"real-audio {split} groups", table[:-2])
        print_table("generated held-out split", table[-2:])
    return table


def save(net: AudioNet, cfg: AudioConfig, args: argparse.Namespace, table: list) -> None:
    """fp16 safetensors + JSON config (with provenance) into ``args.out``."""
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / "audio_tower.safetensors"))
    (out / "audio_tower.safetensors").chmod(0o644)
    meta = json.loads(cfg.to_json()) | {
        "trained_with": "benchmarks/train_audio.py " + " ".join(sys.argv[1:]),
        "data": "../shared/data/real-audio (UrbanSound8K CC BY-NC 3.0, Kitchen20 Freesound CC non-commercial, "
                "Speech Commands CC BY 4.0; held out: " + args.holdout + " groups) + benchmarks/make_audio_data.py "
                "--seed 0 (espeak-ng, flite, fluidsynth FluidR3_GM, sox)",
        "text_tower": "all-MiniLM-L6-v2 (frozen, normalised sentence embeddings)",
        "held_out": {name: m for name, m in table},
    }
    (out / "audio_tower.json").write_text(json.dumps(meta, indent=2))
    AudioTower.load(out / "audio_tower.safetensors")  # round-trip check
    print(f"saved {out / 'audio_tower.safetensors'} ({(out / 'audio_tower.safetensors').stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="benchmarks/_data/audio")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real-audio"))
    ap.add_argument("--cache", default="benchmarks/_data/real_audio_mel.pt", help="decoded real clips (log-mel)")
    ap.add_argument("--holdout", choices=["test", "val"], default="test", help="val: also hold out the validation groups")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (bit-identical weights need the same count)")
    ap.add_argument("--coarse", type=float, default=0.25, help="chance a generated clip gets a label-level caption")
    ap.add_argument("--coarse-real", type=float, default=0.15, help="chance a spoken word is captioned 'a person speaking'")
    ap.add_argument("--real-repeat", type=int, default=3, help="times each real clip is seen per epoch")
    ap.add_argument("--balance", type=float, default=0.0, help="class-balanced real sampling (0: off, 0.5: sqrt, 1: equal)")
    ap.add_argument("--syn-frac", type=float, default=0.5, help="fraction of the generated clips drawn per epoch")
    ap.add_argument("--p-mix", type=float, default=0.15, help="chance a clip is mixed with another (captions mixed too)")
    ap.add_argument("--p-bg", type=float, default=0.3, help="chance of background noise 3-25 dB down")
    ap.add_argument("--p-phone", type=float, default=0.1, help="chance of a telephone band")
    ap.add_argument("--p-lowpass", type=float, default=0.1, help="chance of a 2.5-7 kHz low-pass")
    ap.add_argument("--min-frames", type=int, default=200, help="shortest training crop (frames of 10 ms)")
    ap.add_argument("--eval-every", type=int, default=0, help="print held-out tagging every N epochs")
    ap.add_argument("--band-shift", type=int, default=3, help="max mel-band shift augmentation (0: off)")
    train(ap.parse_args())


if __name__ == "__main__":
    main()
