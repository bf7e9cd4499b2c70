"""Train the xsearch audio tower LiT-style: audio CNN -> frozen MiniLM caption embeddings, symmetric InfoNCE.

Data: benchmarks/make_audio_data.py (train/test split column in captions.csv). Prints the held-out table and
saves fp16 weights + JSON config into the package (xsearch/encoders/weights/audio_tower.*).

Reproduce the shipped weights bit for bit (2 CPU threads: data ~1.5 min, training ~2 min; the data step needs
apt-get install -y --no-install-recommends espeak-ng flite sox fluidsynth fluid-soundfont-gm):
  .venv/bin/python benchmarks/make_audio_data.py --out benchmarks/_data/audio --seed 0
  .venv/bin/python benchmarks/train_audio.py --data benchmarks/_data/audio --seed 0
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from audio_eval import label_matrix, print_table, read_captions, retrieval, text_embed, zero_shot  # noqa: E402
from xsearch.encoders.audio import WEIGHTS_DIR, AudioConfig, AudioNet, AudioTower, log_mel, normalize_loudness  # noqa: E402
from xsearch.train.loss import ClipLoss  # noqa: E402


def features(rows: list[dict], cfg: AudioConfig, cache: Path) -> torch.Tensor:
    """(n, n_mels, frames) float16 log-mels of the clips (one window each: clips are shorter than window_s)."""
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


def crop(x: torch.Tensor, gen: torch.Generator, min_frames: int = 100) -> torch.Tensor:
    """Half the batches: one random length for the batch, each clip cut around its loudest 0.25 s.

    Real clips are often shorter than the 3 s training clips and have little silence around the sound.
    """
    b, m, t = x.shape
    if torch.rand(1, generator=gen).item() < 0.5:
        return x
    length = int(torch.randint(min_frames, t, (1,), generator=gen))
    energy = torch.nn.functional.avg_pool1d(x.mean(dim=1, keepdim=True), 25, 1, 12, count_include_pad=False)[:, 0]
    center = energy.argmax(dim=1)
    offset = (torch.rand(b, generator=gen) * 0.6 + 0.2) * length
    start = (center - offset.long()).clamp(0, t - length)
    idx = start[:, None] + torch.arange(length)[None]
    return torch.gather(x, 2, idx[:, None].expand(b, m, length))


def band_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Shift each clip along the mel axis by up to +-3 bands (pitch / vocal-tract-length perturbation)."""
    b, m, t = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
    idx = (torch.arange(m)[None] - shift[:, None]).clamp(0, m - 1)
    return torch.gather(x, 1, idx[:, :, None].expand(b, m, t))


def coarse_captions(row: dict) -> list[str]:
    """Label-level captions a clip may be trained with instead of its detailed one (helps zero-shot tagging)."""
    label, cap = row["label"], row["caption"]
    if label == "speech":
        who = "woman" if any(w in cap for w in ("woman", "girl", "female")) else "man" if any(
            w in cap for w in ("man", "boy", "male")) else "person"
        return [f"a {who} speaking", "someone talking", "speech", "a person saying a word", "spoken words", "a voice"]
    if label == "mix" or row["kind"] == "mix":
        return []
    art = ("an " if label[0] in "aeiou" else "a ") + label
    return [label, f"the sound of {art}"]


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random crop, gain offset (+-6.5 dB), band shift, time shift, two time and two frequency masks."""
    x = crop(x, gen)
    if max_shift:
        x = band_shift(x, gen, max_shift)
    x = x + (torch.rand(x.shape[0], 1, 1, generator=gen) * 3 - 1.5)
    b, m, t = x.shape
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


def unique_caption_batches(caps: list[str], batch: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches in which no caption string occurs twice (no false negatives from exact duplicates)."""
    order = list(range(len(caps)))
    rng.shuffle(order)
    batches, pending = [], order
    while pending:
        cur, seen, rest = [], set(), []
        for i in pending:
            if len(cur) < batch and caps[i] not in seen:
                cur.append(i)
                seen.add(caps[i])
            else:
                rest.append(i)
        if len(cur) < batch // 2 and batches:
            break  # drop the duplicate-heavy tail
        batches.append(cur)
        pending = rest
    return batches


@torch.inference_mode()
def embed(net: AudioNet, mel: torch.Tensor) -> np.ndarray:
    net.eval()
    out = torch.cat([net(mel[s : s + 256].float()) for s in range(0, len(mel), 256)])
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def evaluate(net: AudioNet, mel: torch.Tensor, rows: list[dict]) -> list[tuple[str, dict]]:
    """Held-out retrieval, zero-shot label accuracy and spoken-word accuracy."""
    emb = embed(net, mel)
    caps = [r["caption"] for r in rows]
    table = [("retrieval (all held-out)", retrieval(emb, caps))]
    labels = sorted({r["label"] for r in rows if r["label"] != "mix"})
    keep = [i for i, r in enumerate(rows) if r["label"] != "mix"]
    zs = zero_shot(emb[keep], [rows[i]["label"] for i in keep], labels, label_matrix(labels))
    table.append(("zero-shot labels", zs))
    sp = [i for i, r in enumerate(rows) if r["kind"] == "speech"]
    words = sorted({r["words"] for r in rows if r["words"]})
    wmat = text_embed([f"someone says '{w}'" for w in words])
    table.append(("zero-shot spoken words", zero_shot(emb[sp], [rows[i]["words"] for i in sp], words, wmat)))
    return table


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = AudioConfig()
    rows = read_captions(args.data)
    t0 = time.time()
    mel = features(rows, cfg, Path(args.data) / "_features.pt")
    train_i = [i for i, r in enumerate(rows) if r["split"] == "train"]
    test_i = [i for i, r in enumerate(rows) if r["split"] == "test"]
    fine = [rows[i]["caption"] for i in train_i]
    coarse = [coarse_captions(rows[i]) for i in train_i]
    uniq = sorted(set(fine) | {c for cs in coarse for c in cs})
    txt = torch.from_numpy(text_embed(uniq))
    col = {c: j for j, c in enumerate(uniq)}
    print(f"features {tuple(mel.shape)} + {len(uniq)} caption embeddings in {time.time() - t0:.0f}s; "
          f"train {len(train_i)} / test {len(test_i)}", flush=True)
    net, loss_fn = AudioNet(cfg), ClipLoss(init_temperature=0.07)
    params = [{"params": net.parameters(), "weight_decay": 0.02}, {"params": loss_fn.parameters(), "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=args.lr)
    n_batches = len(unique_caption_batches(fine, args.batch, random.Random(0)))
    total, step = args.epochs * n_batches, 0
    train_mel = mel[train_i]
    for epoch in range(args.epochs):
        net.train()
        t_ep, losses = time.time(), []
        caps = fine if not args.coarse else [
            rng.choice(cs) if cs and rng.random() < args.coarse else f for f, cs in zip(fine, coarse)]
        cap_idx = torch.tensor([col[c] for c in caps])
        for b in unique_caption_batches(caps, args.batch, rng):
            lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
            for g in opt.param_groups:
                g["lr"] = lr
            x = augment(train_mel[b].float(), gen, args.band_shift)
            a = torch.nn.functional.normalize(net(x), dim=-1)
            loss = loss_fn(a, txt[cap_idx[b]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.3f} T={1 / loss_fn.scale().item():.3f} "
              f"{time.time() - t_ep:.0f}s", flush=True)
    table = evaluate(net, mel[test_i], [rows[i] for i in test_i])
    print_table(f"held-out generated split ({len(test_i)} clips), trained {time.time() - t0:.0f}s", table)
    save(net, cfg, args, table)


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
        "data": "benchmarks/make_audio_data.py --seed 0 (espeak-ng, fluidsynth FluidR3_GM, sox)",
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
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--coarse", type=float, default=0.25, help="chance a clip is trained with a label-level caption")
    ap.add_argument("--band-shift", type=int, default=3, help="max mel-band shift augmentation (0: off)")
    train(ap.parse_args())


if __name__ == "__main__":
    main()
