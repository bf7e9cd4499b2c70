"""The contrastive training loop over two towers (frozen, cached features + trainable head).

Two levels:

- :func:`fit` — the generic loop: two :class:`Tower` objects (features for every item computed once, a head each),
  train/validation pairs of item indices, symmetric InfoNCE with a learnable temperature, optional hard negatives,
  early stopping on validation mean recall, before/after metrics. Other towers (e.g. an audio CNN on cached
  log-mels) use this directly: put the whole network in ``head`` and, if wanted, an ``augment`` hook.
- :func:`train` — the ``xsearch train`` pipeline: manifest -> split -> base encoder features -> fit -> saved
  ``align:`` encoder.

A trainable tower against frozen text, e.g. audio::

    audio = Tower("audio", logmels, AudioNet(cfg), augment=random_crop)   # logmels: (n_clips, n_mels, frames)
    text = Tower("text", torch.from_numpy(caption_vectors), nn.Identity())  # frozen MiniLM, no head
    result = fit(audio, text, train_pairs, val_pairs, FitConfig(epochs=30, lr=1e-3, quiet=False))
    result.after["text_to_audio"]["R@10"]
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import BadInput
from ..evaluate import retrieval_report
from .data import PairSet, unique_batches
from .loss import ClipLoss

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Progress = Callable[[str, int, int], None]  # (stage, done, total)
KS = (1, 5, 10)


@dataclass
class Tower:
    """One side of the alignment: frozen features for every item (computed once) and a trainable head.

    ``features`` is ``(n_items, ...)``: any shape the head accepts (vectors, log-mel windows, ...).
    ``augment`` (optional) transforms a training batch of features (random crops, noise); not used at evaluation.
    ``baseline`` (optional) is the frozen base encoder's ``(n_items, dim)`` embeddings, used for the "before"
    metrics when the untrained head is not already the base space.
    """

    modality: str
    features: torch.Tensor
    head: nn.Module
    feature_kind: str = "embed"
    spec: Optional[dict[str, Any]] = None
    augment: Optional[Augment] = None
    baseline: Optional[np.ndarray] = None


@dataclass
class FitConfig:
    """Optimisation settings for :func:`fit`."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    hard_negatives: float = 0.0
    patience: int = 4
    seed: int = 0
    init_temperature: float = 0.05
    learn_temperature: bool = True
    min_lr_ratio: float = 0.1
    quiet: bool = True  # no progress bar unless a ``progress`` callback is given or this is False
    eval_chunk: int = 512
    threads: Optional[int] = None  # torch threads while fitting; None: 1 for small heads on vectors (faster on busy CPUs)


@dataclass
class FitResult:
    """Validation metrics before and after training, the chosen epoch and per-epoch history."""

    before: dict[str, Any]
    after: dict[str, Any]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    temperature: float = 0.0
    seconds: float = 0.0
    split: str = "validation"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's legacy global RNG (the loop itself uses explicit generators)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def direction_names(modality_a: str, modality_b: str) -> tuple[str, str]:
    """Metric keys for b->a and a->b retrieval, e.g. ``("text_to_image", "image_to_text")``."""
    if modality_a == modality_b:
        return "b_to_a", "a_to_b"
    return f"{modality_b}_to_{modality_a}", f"{modality_a}_to_{modality_b}"


# ---- evaluation ------------------------------------------------------------------------------
def embed_items(tower: Tower, idx: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Head outputs (L2-normalised numpy) for the tower's items ``idx`` (eval mode, no grad)."""
    was_training = tower.head.training
    tower.head.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), chunk):
            y = tower.head(tower.features[torch.as_tensor(idx[s : s + chunk])])
            out.append(nn.functional.normalize(y.float(), dim=-1).cpu().numpy())
    tower.head.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def evaluate_pairs(emb_a: np.ndarray, emb_b: np.ndarray, pairs: np.ndarray, names: tuple[str, str]) -> dict[str, Any]:
    """R@1/5/10, mean rank etc. both ways for ``pairs`` indexing rows of ``emb_a`` / ``emb_b``."""
    ua, ia = np.unique(pairs[:, 0], return_inverse=True)
    ub, ib = np.unique(pairs[:, 1], return_inverse=True)
    rel = np.zeros((len(ua), len(ub)), dtype=bool)
    rel[ia.reshape(-1), ib.reshape(-1)] = True
    sim = emb_b[ub] @ emb_a[ua].T  # (queries b, items a)
    b2a = retrieval_report(sim, rel.T, KS)
    a2b = retrieval_report(sim.T, rel, KS)
    mean_recall = float(np.mean([b2a[f"R@{k}"] for k in KS] + [a2b[f"R@{k}"] for k in KS]))
    return {names[0]: b2a, names[1]: a2b, "mean_recall": mean_recall, "n_a": int(len(ua)), "n_b": int(len(ub))}


def _evaluate(ta: Tower, tb: Tower, pairs: np.ndarray, names, chunk: int, baseline: bool = False) -> dict[str, Any]:
    ua, ub = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
    emb = []
    for tower, u in ((ta, ua), (tb, ub)):
        if baseline and tower.baseline is not None:
            e = tower.baseline[u]
        else:
            e = embed_items(tower, u, chunk)
        full = np.zeros((int(tower.features.shape[0]), e.shape[1]), np.float32)
        full[u] = e
        emb.append(full)
    return evaluate_pairs(emb[0], emb[1], pairs, names)


# ---- training --------------------------------------------------------------------------------
def _params(ta: Tower, tb: Tower) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in list(ta.head.parameters()) + list(tb.head.parameters()):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _batch(tower: Tower, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    x = tower.features[torch.as_tensor(idx)]
    if tower.augment is not None:
        x = tower.augment(x, gen)
    return nn.functional.normalize(tower.head(x).float(), dim=-1)


def _state(ta: Tower, tb: Tower, loss: ClipLoss) -> list[dict[str, torch.Tensor]]:
    return [copy.deepcopy(m.state_dict()) for m in (ta.head, tb.head, loss)]


def _restore(ta: Tower, tb: Tower, loss: ClipLoss, state: list[dict[str, torch.Tensor]]) -> None:
    for m, s in zip((ta.head, tb.head, loss), state):
        m.load_state_dict(s)


SMALL_HEADS = 2_000_000  # parameters; MLP heads below this train faster on one torch thread than on contending ones


def fit(ta: Tower, tb: Tower, train_pairs: np.ndarray, val_pairs: Optional[np.ndarray], config: FitConfig,
        progress: Optional[Progress] = None) -> FitResult:
    """Train ``ta.head`` and ``tb.head`` so that paired items meet; keep the epoch with the best val mean recall.

    Pairs are ``(m, 2)`` int arrays of (index into ``ta.features``, index into ``tb.features``). Without
    ``val_pairs`` the metrics are on the training pairs and the last epoch is kept. ``progress`` gets
    ``(stage, done, total)``; without it a rich bar is shown unless ``config.quiet``.
    """
    vectors = ta.features.dim() == 2 and tb.features.dim() == 2
    threads = config.threads or (1 if vectors and sum(p.numel() for p in _params(ta, tb)) < SMALL_HEADS else None)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with _progress_bar(config.quiet, progress) as report:
            return _fit(ta, tb, np.asarray(train_pairs, dtype=np.int64), val_pairs, config, report)
    finally:
        torch.set_num_threads(previous)


class _Run:
    """Mutable state of one fit: optimiser, loss, step counter, RNGs."""

    def __init__(self, ta: Tower, tb: Tower, pairs: np.ndarray, config: FitConfig, report: Progress):
        seed_everything(config.seed)
        self.ta, self.tb, self.pairs, self.config, self.report = ta, tb, pairs, config, report
        self.rng = np.random.default_rng(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.loss = ClipLoss(config.init_temperature, learnable=config.learn_temperature)
        groups = [{"params": _params(ta, tb), "weight_decay": config.weight_decay}]
        if config.learn_temperature:
            groups.append({"params": [self.loss.logit_scale], "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=config.lr)
        self.step = 0
        self.total = max(1, len(unique_batches(pairs, config.batch_size, np.random.default_rng(0))) * config.epochs)

    def epoch(self) -> Optional[float]:
        """One pass over the training pairs; the mean batch loss."""
        self.ta.head.train()
        self.tb.head.train()
        losses = []
        for batch in unique_batches(self.pairs, self.config.batch_size, self.rng):
            self.step += 1
            if len(batch) < 2:
                continue
            for g in self.opt.param_groups:
                g["lr"] = _cosine(self.config.lr, self.config.min_lr_ratio, self.step, self.total)
            a = _batch(self.ta, self.pairs[batch, 0], self.gen)
            b = _batch(self.tb, self.pairs[batch, 1], self.gen)
            loss = self.loss(a, b, self.config.hard_negatives)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
            self.report("train", self.step, self.total)
        return float(np.mean(losses)) if losses else None

    def temperature(self) -> float:
        return 1.0 / self.loss.scale().item()


def _fit(ta: Tower, tb: Tower, train_pairs: np.ndarray, val_pairs: Optional[np.ndarray], config: FitConfig,
         report: Progress) -> FitResult:
    t0 = time.perf_counter()
    if len(train_pairs) < 2:
        raise BadInput(f"need at least 2 training pairs, got {len(train_pairs)}")
    has_val = val_pairs is not None and len(val_pairs) > 0
    eval_pairs = np.asarray(val_pairs if has_val else train_pairs, dtype=np.int64)
    names = direction_names(ta.modality, tb.modality)
    run = _Run(ta, tb, train_pairs, config, report)

    def evaluate() -> dict[str, Any]:
        return _evaluate(ta, tb, eval_pairs, names, config.eval_chunk)

    before = _evaluate(ta, tb, eval_pairs, names, config.eval_chunk, baseline=True)
    at_init = evaluate() if (ta.baseline is not None or tb.baseline is not None) else before
    best, best_epoch, best_state, wait = at_init["mean_recall"], 0, _state(ta, tb, run.loss), 0
    history: list[dict[str, Any]] = [{"epoch": 0, "loss": None, "val_mean_recall": best}]
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        loss = run.epoch()
        score = evaluate()["mean_recall"]
        history.append({"epoch": epoch, "loss": loss, "val_mean_recall": score, "temperature": run.temperature()})
        if score > best + 1e-9 or not has_val:
            best, best_epoch, best_state, wait = score, epoch, _state(ta, tb, run.loss), 0
        else:
            wait += 1
            if config.patience > 0 and wait >= config.patience:
                break
    _restore(ta, tb, run.loss, best_state)
    return FitResult(before, evaluate(), best_epoch, epoch, history, run.temperature(), time.perf_counter() - t0,
                     "validation" if has_val else "train")


def _cosine(lr: float, min_ratio: float, step: int, total: int) -> float:
    frac = min(1.0, step / total)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ---- the `xsearch train` pipeline --------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything ``xsearch train`` needs: data, base encoder, output folder and optimisation settings."""

    manifest: str
    out: str
    base: str = "xsearch-mini"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.05
    val_fraction: float = 0.2
    seed: int = 0
    hard_negatives: float = 0.0
    patience: int = 4
    image_features: str = "auto"  # embed | pooled | embed+pooled | auto
    hidden: int = 256
    dropout: float = 0.2
    train_sides: str = "auto"  # auto (non-text sides; text stays the frozen base, LiT style) | both | a | b
    cache_dir: Optional[str] = None  # frozen features cached here as .npy, keyed by base, kind and item identity
    quiet: bool = False


@dataclass
class TrainResult:
    """Where the encoder went, its registry name, the data sizes and the fit's metrics."""

    encoder: str
    out: str
    fit: FitResult
    counts: dict[str, int]
    directions: tuple[str, str]
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "out": self.out, "counts": self.counts, "directions": list(self.directions),
                "before": self.fit.before, "after": self.fit.after, "split": self.fit.split,
                "best_epoch": self.fit.best_epoch, "epochs_run": self.fit.epochs_run, "temperature": self.fit.temperature,
                "seconds": self.fit.seconds, "history": self.fit.history, "config": asdict(self.config)}


_NOT_SAVED = ("manifest", "out", "quiet", "cache_dir")


def train(config: TrainConfig, progress: Optional[Progress] = None) -> TrainResult:
    """Manifest -> item split -> cached frozen features -> fit heads -> saved ``align:`` encoder."""
    from ..encoders import aligned
    from ..encoders.registry import create
    from .data import read_pairs, split_pairs

    if config.train_sides not in ("auto", "both", "a", "b"):
        raise BadInput(f"train_sides must be auto, both, a or b, got {config.train_sides!r}")
    data = read_pairs(config.manifest)
    train_idx, val_idx = split_pairs(data, config.val_fraction, config.seed)
    base = create(config.base)
    with _progress_bar(config.quiet, progress) as report:
        towers = [_build_tower(base, data, side, config, report) for side in ("a", "b")]
        if towers[0].modality == towers[1].modality and all(t.spec for t in towers):
            towers[1].head, towers[1].spec = towers[0].head, towers[0].spec  # one head per modality (siamese)
        fit_cfg = FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                            weight_decay=config.weight_decay, hard_negatives=config.hard_negatives,
                            patience=config.patience, seed=config.seed, quiet=config.quiet)
        result = fit(towers[0], towers[1], data.pairs[train_idx], data.pairs[val_idx] if len(val_idx) else None,
                     fit_cfg, report)
    heads = {t.modality: aligned.HeadEntry(t.feature_kind, t.spec, t.head) for t in towers if t.spec}
    counts = {"pairs": len(data), "train_pairs": int(len(train_idx)), "val_pairs": int(len(val_idx)),
              "items": len(data.a), "val_items": int(len(np.unique(data.pairs[val_idx, 0]))) if len(val_idx) else 0,
              "captions": len(data.b)}
    extra = {"seed": config.seed, "metrics": {"split": result.split, "before": result.before, "after": result.after,
                                              "best_epoch": result.best_epoch},
             "training": {"manifest": str(config.manifest), "counts": counts, "temperature": result.temperature,
                          **{k: v for k, v in asdict(config).items() if k not in _NOT_SAVED}}}
    folder = aligned.save(config.out, base.id, heads, extra)
    return TrainResult(f"align:{folder}", str(folder), result, counts,
                       direction_names(towers[0].modality, towers[1].modality), config)


def _build_tower(base, data: PairSet, side: str, config: TrainConfig, report: Progress) -> Tower:
    """Frozen features for every item on ``side`` (computed once) and a fresh head (seeded)."""
    from ..encoders import aligned
    from ..encoders.heads import build_head, default_head_spec

    items = data.a if side == "a" else data.b
    modality = items[0].modality
    trained = _trained(config.train_sides, side, data.modality_a, data.modality_b)
    kind = config.image_features if modality == "image" and trained else "embed"
    if kind == "auto":
        kind = "embed+pooled" if base.id in aligned.POOLED_BASES else "embed"
    aligned.check_feature_kind(base, modality, kind)
    inputs = [it.path if (it.path and modality != "text") else it.load_text() for it in items]
    compute = "embed+pooled" if kind == "pooled" else kind  # pooled: the embed part is the baseline
    feats = _cached_features(base, modality, compute, items, inputs, config.cache_dir, report)
    baseline = feats[:, : base.dim].copy() if kind != "embed" else None
    if kind == "pooled":
        feats = feats[:, base.dim :]
    if not trained:
        return Tower(modality, torch.from_numpy(np.ascontiguousarray(feats)), nn.Identity(), kind)
    seed_everything(config.seed + (0 if side == "a" else 1))
    spec = default_head_spec(feats.shape[1], base.dim, config.hidden, config.dropout,
                             skip="slice" if kind == "embed+pooled" else None)
    return Tower(modality, torch.from_numpy(np.ascontiguousarray(feats)), build_head(spec), kind, spec, baseline=baseline)


def _trained(sides: str, side: str, modality_a: str, modality_b: str) -> bool:
    """Does ``side`` get a head? ``auto``: every non-text side (both when both sides are text)."""
    if sides == "auto":
        modality = modality_a if side == "a" else modality_b
        return modality != "text" or modality_a == modality_b == "text"
    return sides in ("both", side)


def _cached_features(base, modality: str, kind: str, items: list, inputs: list, cache_dir: Optional[str],
                     report: Progress) -> np.ndarray:
    """Features, reusing those in ``cache_dir`` for items (path + size + mtime, or text) seen before with this base."""
    if not cache_dir:
        return _chunked_features(base, modality, kind, inputs, report)
    import hashlib

    from ..atomic import atomic_path

    tag = hashlib.sha256(f"{base.id}|{kind}|{_fingerprint(base, modality, kind)}".encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"{modality}-{tag}.npz"
    keys = [_item_key(it) for it in items]
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path) as z:
                known = dict(zip(z["keys"].tolist(), z["feats"]))
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is rebuilt
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        fresh = _chunked_features(base, modality, kind, [inputs[i] for i in missing], report)
        known.update({keys[i]: fresh[j] for j, i in enumerate(missing)})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.array(list(known)), feats=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys]).astype(np.float32)


def _fingerprint(base, modality: str, kind: str) -> str:
    """Hash of the base's features for a fixed probe input: a changed model (same name) gets a fresh cache."""
    import hashlib

    from ..encoders.aligned import features

    if modality == "text":
        probe: list = ["xsearch feature-cache probe: a dog runs on the beach"]
    elif modality == "image":
        from PIL import Image

        ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
        probe = [Image.fromarray(ramp)]
    else:
        t = np.arange(16_000, dtype=np.float32) / 16_000
        probe = [(0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), 16_000)]
    vec = features(base, modality, kind, probe)
    return hashlib.sha256(np.round(vec.astype(np.float64), 4).tobytes()).hexdigest()


def _item_key(item) -> str:
    import hashlib
    import os

    if item.path:
        st = os.stat(item.path)
        raw = f"{item.path}|{st.st_size}|{st.st_mtime_ns}"
    else:
        raw = f"text|{item.text}"
    return hashlib.sha1(raw.encode()).hexdigest()


def _chunked_features(base, modality: str, kind: str, inputs: list, report: Progress, chunk: int = 128) -> np.ndarray:
    from ..encoders.aligned import features

    out = []
    for s in range(0, len(inputs), chunk):
        out.append(features(base, modality, kind, inputs[s : s + chunk]))
        report(f"{modality} features", min(s + chunk, len(inputs)), len(inputs))
    return np.concatenate(out).astype(np.float32)


class _progress_bar:
    """Context manager yielding a ``(stage, done, total)`` callback: a rich bar on stderr, or a no-op when quiet."""

    def __init__(self, quiet: bool, user: Optional[Progress] = None):
        self.quiet, self.user, self.bar, self.tasks = quiet, user, None, {}

    def __enter__(self) -> Progress:
        if not self.quiet and self.user is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=True)
            self.bar.start()
        return self.report

    def report(self, stage: str, done: int, total: int) -> None:
        if self.user is not None:
            self.user(stage, done, total)
        elif self.bar is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(stage, total=total)
            self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
