"""Benchmark the shipped audio tower: held-out generated split + real recordings from Debian packages.

Real recordings (hand-labelled below; none of them generated here):
  alsa-utils               /usr/share/sounds/alsa/*.wav       (a human voice: "Front Left", ... + Noise.wav)
  asterisk-core-sounds-en-wav  /usr/share/asterisk/sounds/en_US_f_Allison  (8 kHz telephone prompts by a
                           professional speaker: hello, goodbye, digits, longer prompts, beeps)
  sound-theme-freedesktop  /usr/share/sounds/freedesktop/stereo/*.oga  (busy/ringback tones, UI sounds)
  CPython test data        .../test/audiodata/pluck-pcm16.wav (a plucked string)
Missing files are skipped (the table says how many were found).

  apt-get install -y --no-install-recommends alsa-utils asterisk-core-sounds-en-wav sound-theme-freedesktop
  .venv/bin/python benchmarks/bench_audio.py --data benchmarks/_data/audio
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from audio_eval import label_matrix, print_table, read_captions, retrieval, text_embed, zero_shot  # noqa: E402
from make_audio_data import PHRASES, WORDS  # noqa: E402
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
    ap.add_argument("--weights", default=None, help="safetensors file (default: the shipped tower)")
    args = ap.parse_args()
    tower = AudioTower.load(args.weights) if args.weights else AudioTower.load()
    ret, zs, labels = held_out(tower, args.data)
    rret, rzs, detail = real(tower, labels)
    print_table("retrieval R@k (duplicate captions merged)", ret + rret)
    print_table("zero-shot tagging accuracy", zs + rzs)
    print("\n### real clips: truth -> top-3 predicted labels\n")
    for name, truth, top in detail:
        print(f"- {name}: {truth} -> {', '.join(top)}")


if __name__ == "__main__":
    main()
