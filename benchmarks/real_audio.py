"""Real recordings for the audio tower (../shared/data/real-audio): splits, captions, tagging prompts, mel cache.

Splits are by ``group`` (never by clip): held-out TEST groups are UrbanSound8K fold10, Kitchen20 fold1 and every
speaker whose sha1 is 0 or 1 mod 10; VALIDATION groups (used for choices, and trained on for the shipped weights) are
UrbanSound8K fold1, Kitchen20 fold2 and speakers whose sha1 is 2 or 3 mod 10. Everything else is TRAIN.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from audio_eval import read_captions, text_embed, zero_shot

TEST_GROUPS = {"urbansound8k": {"fold10"}, "kitchen20": {"fold1"}}
VAL_GROUPS = {"urbansound8k": {"fold1"}, "kitchen20": {"fold2"}}

# One tagging prompt template per source, fixed before any held-out number was seen.
TAG_TEMPLATES = {
    "urbansound8k": "the sound of {label}",
    "kitchen20": "the sound of {label}",
    "speech-commands": "someone saying the word '{label}'",
}

PHRASES = {  # label -> natural captions (besides the generic templates below)
    "air conditioner": ["an air conditioner humming", "the hum of an air conditioning unit", "an air conditioner running"],
    "car horn": ["a car horn honking", "a car honking its horn", "the beep of a car horn"],
    "children playing": ["children playing outside", "kids shouting and playing", "children laughing and shouting"],
    "dog bark": ["a dog barking", "a dog barks", "the sound of a dog bark"],
    "drilling": ["a power drill drilling", "someone drilling", "the whine of an electric drill"],
    "engine idling": ["an engine idling", "a car engine running at idle", "the rumble of an idling engine"],
    "gun shot": ["a gun shot", "gunfire", "a gun firing"],
    "jackhammer": ["a jackhammer pounding", "a pneumatic drill breaking concrete", "the rattle of a jackhammer"],
    "siren": ["a siren wailing", "an ambulance siren", "a police siren"],
    "street music": ["music playing in the street", "street musicians playing", "a street performer playing music"],
    "blender": ["a blender running", "a kitchen blender mixing"],
    "boiling water": ["water boiling", "a pot of boiling water bubbling"],
    "book": ["pages of a book turning", "someone flipping through a book"],
    "chopping": ["chopping vegetables on a cutting board", "a knife chopping"],
    "clean dishes": ["washing dishes", "someone cleaning dishes in the sink"],
    "cupboard": ["a cupboard door opening and closing", "a kitchen cabinet door"],
    "cutlery": ["cutlery clinking", "forks and knives rattling"],
    "dishwasher": ["a dishwasher running", "the sound of a dishwasher"],
    "drawer": ["a drawer opening and closing", "a kitchen drawer sliding"],
    "eat": ["someone eating", "a person chewing food"],
    "fridge": ["a fridge humming", "a refrigerator door opening"],
    "frying pan": ["food frying in a pan", "sizzling in a frying pan"],
    "juicer": ["a juicer running", "an electric juicer squeezing fruit"],
    "microwave": ["a microwave oven running", "a microwave humming and beeping"],
    "peel": ["peeling vegetables", "someone peeling a potato"],
    "plates": ["plates clattering", "stacking plates"],
    "stove burner": ["a gas stove burner", "the hiss of a gas burner"],
    "stove fan": ["a kitchen extractor fan", "a stove hood fan running"],
    "sweep": ["someone sweeping the floor", "a broom sweeping"],
    "water flowing": ["water flowing from a tap", "running water"],
    "background noise": ["background noise", "ambient background noise", "a quiet room with faint noise", "noise"],
}
GENERIC = ["the sound of {label}", "{label}", "{label} sound"]
WORD_TEMPLATES = [
    "someone saying the word '{label}'", "a person says '{label}'", "the spoken word '{label}'",
    "a voice saying '{label}'", "someone says '{label}'", "a person saying '{label}'",
]
SPEECH_COARSE = ["a person speaking", "someone talking", "speech", "a spoken word"]


def split_of(row: dict) -> str:
    """'test', 'val' or 'train' for one labels.csv row (by group)."""
    src, group = row["source"], row["group"]
    if src == "speech-commands":
        k = int(hashlib.sha1(group.encode()).hexdigest(), 16) % 10
        return "test" if k < 2 else "val" if k < 4 else "train"
    return "test" if group in TEST_GROUPS[src] else "val" if group in VAL_GROUPS[src] else "train"


def is_word(row: dict) -> bool:
    return row["source"] == "speech-commands" and row["label"] != "background noise"


def captions_of(row: dict) -> list[str]:
    """Training captions for one clip (a random one is drawn each epoch)."""
    label = row["label"]
    if is_word(row):
        return [t.format(label=label) for t in WORD_TEMPLATES]
    return PHRASES.get(label, []) + [t.format(label=label) for t in GENERIC]


def coarse_of(row: dict) -> list[str]:
    """Label-free captions a clip may also be trained with (spoken words are 'a person speaking')."""
    return SPEECH_COARSE if is_word(row) else []


def tag_prompt(source: str, label: str) -> str:
    return TAG_TEMPLATES[source].format(label=label)


def read_rows(root: str | Path) -> list[dict]:
    """labels.csv rows with ``path`` and ``split`` added (file order)."""
    rows = read_captions(root, "labels.csv")
    for r in rows:
        r["split"] = split_of(r)
    return rows


def mel_cache(rows: list[dict], cfg, cache: Path) -> list[torch.Tensor]:  # noqa: ANN001 - AudioConfig
    """Per clip (n_mels, frames) float16 log-mel, preprocessed like inference: loudness-normalised, short clips
    centred in ``min_s`` over the faint floor. Decoded once and cached (the key covers files, sizes and config)."""
    from xsearch.encoders.audio import log_mel, normalize_loudness, pad_centred, resample
    from xsearch.media import load_audio

    h = hashlib.sha1(cfg.to_json().encode())
    for r in rows:
        h.update(f"{r['file']}:{Path(r['path']).stat().st_size}".encode())
    key = h.hexdigest()
    if cache.exists():
        saved = torch.load(cache)
        if saved["key"] == key:
            return saved["mel"]
    mels, min_len = [], int(cfg.min_s * cfg.sample_rate)
    for r in rows:
        wave, sr = load_audio(r["path"])
        wave = resample(np.nan_to_num(wave), sr, cfg.sample_rate)
        if len(wave) < min_len:
            wave = pad_centred(wave, min_len, cfg.pad_floor_db)
        wave = normalize_loudness(wave, cfg.target_rms)
        mels.append(log_mel(torch.from_numpy(wave), cfg)[0].half())
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "mel": mels}, cache)
    return mels


def real_metrics(emb: np.ndarray, rows: list[dict]) -> list[tuple[str, dict]]:
    """Per source: zero-shot tagging over that source's labels (one prompt template) and text->audio R@1/R@5
    (queries: every caption phrasing of the source's labels; a hit if a top-k clip has that label)."""
    table = []
    for source in ("urbansound8k", "kitchen20", "speech-commands"):
        idx = [i for i, r in enumerate(rows) if r["source"] == source and (source != "speech-commands" or is_word(r))]
        if not idx:
            continue
        truth = [rows[i]["label"] for i in idx]
        labels = sorted(set(truth))
        zs = zero_shot(emb[idx], truth, labels, text_embed([tag_prompt(source, lab) for lab in labels]))
        queries = [(c, r["label"]) for r in {rows[i]["label"]: rows[i] for i in idx}.values() for c in captions_of(r)]
        sim = text_embed([q for q, _ in queries]) @ emb[idx].T
        order = np.argsort(-sim, axis=1)
        lab = np.array(truth)
        r1 = float(np.mean([lab[order[q, 0]] == ql for q, (_, ql) in enumerate(queries)]))
        r5 = float(np.mean([np.any(lab[order[q, :5]] == ql) for q, (_, ql) in enumerate(queries)]))
        table.append((source, {"tag_top1": zs["top1"], "tag_top3": zs["top3"], "t2a_R@1": r1, "t2a_R@5": r5,
                               "clips": len(idx), "labels": len(labels), "queries": len(queries)}))
    return table
