"""Benchmark the audio tower, old (from git history) vs new (shipped), through the full AudioTower.encode path.

Sets: the real-audio held-out groups (UrbanSound8K fold10, Kitchen20 fold1, held-out Speech Commands speakers; see
real_audio.py), the held-out generated split of make_audio_data.py, and the real Debian recordings below.

Real recordings (hand-labelled below; none of them generated here):
  alsa-utils               /usr/share/sounds/alsa/*.wav       (a human voice: "Front Left", ... + Noise.wav)
  asterisk-core-sounds-en-wav  /usr/share/asterisk/sounds/en_US_f_Allison  (8 kHz telephone prompts by a
                           professional speaker: hello, goodbye, digits, longer prompts, beeps)
  sound-theme-freedesktop  /usr/share/sounds/freedesktop/stereo/*.oga  (busy/ringback tones, UI sounds)
  CPython test data        .../test/audiodata/pluck-pcm16.wav (a plucked string)
Missing files are skipped (the table says how many were found).

  apt-get install -y --no-install-recommends alsa-utils asterisk-core-sounds-en-wav sound-theme-freedesktop
  python benchmarks/bench_audio.py --data benchmarks/_data/audio --real ../shared/data/real-audio
"""
from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from audio_eval import label_matrix, print_table, read_captions, retrieval, text_embed, zero_shot  # noqa: E402
from make_audio_data import PHRASES, WORDS  # noqa: E402
from real_audio import read_rows, real_metrics  # noqa: E402
from xsearch.encoders.audio import AudioTower  # noqa: E402

ALSA = "/usr/share/sounds/alsa"
AST = "/usr/share/asterisk/sounds/en_US_f_Allison"
FD = "/usr/share/sounds/freedesktop/stereo"
DIGITS = ["zero", "one", "two", "three", "four", "five"]

# (path, caption, accepted zero-shot labels (empty: not scored), spoken words in the training vocabulary or "")
REAL: list[tuple[str, str, tuple[str, ...], str]] = [
    *[(f"{ALSA}/{n}.wav", f"a person saying '{n.replace('_', ' ').lower()}'", ("speech",), n.replace("_", " ").lower())
      for n in ("Front_Left", "Front_Right", "Front_Center", "Rear_Left", "Rear_Right", "Rear_Center", "Side_Left", "Side_Right")],
    (f"{ALSA}/Noise.wav", "noise", ("white noise", "pink noise", "brown noise"), ""),
    (f"{AST}/hello.wav", "a woman saying 'hello'", ("speech",), "hello"),
    (f"{AST}/goodbye.wav", "a woman saying 'goodbye'", ("speech",), "goodbye"),
    (f"{AST}/hello-world.wav", "a woman saying 'hello world'", ("speech",), "hello world"),
    *[(f"{AST}/digits/{i}.wav", f"a woman saying '{w}'", ("speech",), w) for i, w in enumerate(DIGITS)],
    (f"{AST}/please-try-again.wav", "a woman saying 'please try again'", ("speech",), ""),
    (f"{AST}/one-moment-please.wav", "a woman saying 'one moment please'", ("speech",), ""),
    (f"{AST}/im-sorry.wav", "a woman saying 'I'm sorry'", ("speech",), ""),
    (f"{AST}/demo-congrats.wav", "a woman speaking a long telephone announcement", ("speech",), ""),
    (f"{AST}/beep.wav", "a beep", ("beeps", "sine tone"), ""),
    (f"{FD}/phone-outgoing-busy.oga", "a telephone busy signal: repeating beeps", ("beeps",), ""),
    (f"{FD}/phone-outgoing-calling.oga", "a telephone ringback tone", ("beeps", "sine tone"), ""),
    (f"{FD}/bell.oga", "a bell ding", (), ""),
    (f"{FD}/camera-shutter.oga", "a camera shutter click", (), ""),
    (f"{FD}/trash-empty.oga", "paper crumpling", (), ""),
    (f"{FD}/alarm-clock-elapsed.oga", "an alarm clock ringing", (), ""),
    (f"{FD}/phone-incoming-call.oga", "a phone ringtone melody", (), ""),
    (f"{FD}/service-login.oga", "a soft musical chime", (), ""),
    (f"{FD}/complete.oga", "a short chime", (), ""),
    *[(p, "a plucked guitar string", ("acoustic guitar", "harp", "banjo"), "")
      for p in sorted(glob.glob("/root/.pyenv/versions/3.11*/lib/python3.11/test/audiodata/pluck-pcm16.wav")
                      + glob.glob("/usr/lib/python3*/test/audiodata/pluck-pcm16.wav"))[:1]],
]


OLD_REV = "d38261d"  # the last commit with the synthetic-only tower (md5 9c28249e...)


def old_tower(rev: str, folder: Path) -> Path:
    """The tower shipped at git ``rev``, written to ``folder`` (safetensors + json)."""
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("safetensors", "json"):
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:xsearch/encoders/weights/audio_tower.{ext}"],
                              check=True, capture_output=True).stdout
        (folder / f"audio_tower.{ext}").write_bytes(blob)
    return folder / "audio_tower.safetensors"


def real_held_out(tower: AudioTower, root: str) -> list[tuple[str, dict]]:
    """Tagging top-1 over each source's labels and text->audio R@k on the held-out groups (never trained on)."""
    rows = [r for r in read_rows(root) if r["split"] == "test"]
    t0 = time.time()
    emb = tower.encode([r["path"] for r in rows])
    print(f"encoded {len(rows)} held-out real clips in {time.time() - t0:.1f}s", flush=True)
    return real_metrics(emb, rows)


def held_out(tower: AudioTower, data: str) -> list[tuple[str, dict]]:
    """The generated test split through the full AudioTower.encode path (files, windowing, resampling)."""
    rows = [r for r in read_captions(data) if r["split"] == "test"]
    t0 = time.time()
    emb = tower.encode([r["path"] for r in rows])
    print(f"encoded {len(rows)} held-out clips in {time.time() - t0:.1f}s", flush=True)
    table = [("generated: retrieval", retrieval(emb, [r["caption"] for r in rows]))]
    by_kind = {}
    for kind in ("speech", "instrument", "synth", "mix"):
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        by_kind[kind] = retrieval(emb[idx], [rows[i]["caption"] for i in idx])
    table += [(f"generated {k}: retrieval", m) for k, m in by_kind.items()]
    labels = sorted({r["label"] for r in read_captions(data) if r["label"] != "mix"})
    keep = [i for i, r in enumerate(rows) if r["label"] != "mix"]
    zs = zero_shot(emb[keep], [rows[i]["label"] for i in keep], labels, label_matrix(labels))
    words = sorted(set(WORDS) | set(PHRASES))
    sp = [i for i, r in enumerate(rows) if r["kind"] == "speech"]
    ws = zero_shot(emb[sp], [rows[i]["words"] for i in sp], words, text_embed([f"someone says '{w}'" for w in words]))
    return table, [("generated: labels", zs), ("generated: spoken words", ws)], labels


def real(tower: AudioTower, labels: list[str]) -> tuple[list, list, list]:
    """Retrieval among the real clips' captions, zero-shot labels (any accepted label counts) and spoken words."""
    items = [r for r in REAL if Path(r[0]).exists()]
    emb = tower.encode([p for p, *_ in items])
    table = [("real: retrieval", retrieval(emb, [c for _, c, _, _ in items]))]
    mat = label_matrix(labels)
    scored = [i for i, r in enumerate(items) if r[2]]
    pred = np.argsort(-(emb[scored] @ mat.T), axis=1)
    top1 = np.mean([labels[pred[j, 0]] in items[i][2] for j, i in enumerate(scored)])
    top3 = np.mean([any(labels[k] in items[i][2] for k in pred[j, :3]) for j, i in enumerate(scored)])
    zs = [("real: labels", {"top1": float(top1), "top3": float(top3), "n": len(scored), "n_labels": len(labels)})]
    words = sorted(set(WORDS) | set(PHRASES))
    sp = [i for i, r in enumerate(items) if r[3]]
    ws = zero_shot(emb[sp], [items[i][3] for i in sp], words, text_embed([f"someone says '{w}'" for w in words]))
    zs.append(("real: spoken words", ws))
    detail = []
    for j, i in enumerate(scored):
        detail.append((Path(items[i][0]).name, "/".join(items[i][2]), [labels[k] for k in pred[j, :3]]))
    return table, zs, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="benchmarks/_data/audio")
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real-audio"))
    ap.add_argument("--weights", default=None, help="safetensors file (default: the shipped tower)")
    ap.add_argument("--old", default=OLD_REV, help="git revision of the tower to compare with ('' for none)")
    ap.add_argument("--detail", action="store_true", help="list the Debian clips' top-3 labels")
    args = ap.parse_args()
    torch.set_num_threads(1)
    towers = [("new", AudioTower.load(args.weights) if args.weights else AudioTower.load())]
    if args.old:
        towers.insert(0, (f"old ({args.old})", AudioTower.load(old_tower(args.old, ROOT / "benchmarks/_data/old_tower"))))
    real_rows, ret_rows, zs_rows, details = [], [], [], {}
    for name, tower in towers:
        if Path(args.real).exists():
            real_rows += [(f"{name}: {src}", m) for src, m in real_held_out(tower, args.real)]
        ret, zs, labels = held_out(tower, args.data)
        rret, rzs, details[name] = real(tower, labels)
        ret_rows += [(f"{name}: {k}", m) for k, m in ret + rret]
        zs_rows += [(f"{name}: {k}", m) for k, m in zs + rzs]
    if real_rows:
        print_table("real-audio held-out groups: tagging over each source's labels, text->audio R@k", real_rows)
    print_table("retrieval R@k (duplicate captions merged)", ret_rows)
    print_table("zero-shot tagging accuracy", zs_rows)
    if args.detail:
        for name, detail in details.items():
            print(f"\n### {name}: Debian clips, truth -> top-3 predicted labels\n")
            for clip, truth, top in detail:
                print(f"- {clip}: {truth} -> {', '.join(top)}")


if __name__ == "__main__":
    main()
