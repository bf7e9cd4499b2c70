"""A BERT sentence encoder in plain numpy: the torch-free twin of ``minilm.py`` for fast cold text queries.

Importing torch costs 2-4 s, more than a whole query; one MiniLM-L6 forward pass over a few short texts takes a few
ms in numpy. This module never imports torch: it reads the sentence-transformers folder itself (``config.json``,
pooling config, ``tokenizer.json`` through ``tokenizers``) and memory-maps ``model.safetensors`` (only the rows
of the embedding table a query touches are read from disk). A folder that ships only ``pytorch_model.bin`` is
converted once to ``.npy`` files under ``$XSEARCH_CACHE`` (keyed by the checkpoint's hash), which needs torch
that one time. The network is HF ``BertModel`` layer for layer, as in ``minilm.py``; vectors agree with the torch
runtime to float32 rounding (max abs difference ~1e-6, tested at 1e-5).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import MissingDependency, ModelLoadError

POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")  # sentence-transformers order
IGNORED_WEIGHTS = ("pooler.", "embeddings.position_ids")  # in the checkpoint, unused for sentence embeddings
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


# ---- folder files (shared with the torch runtime) --------------------------------------------------------
def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.2e-7 absolute (Numerical Recipes' erfc Chebyshev fit), vectorised in float64."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    return np.sign(x) * (1.0 - t * np.exp(poly))


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU: x/2 * (1 + erf(x/sqrt(2)))."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf(x64 * math.sqrt(0.5)))).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": lambda x: np.maximum(x, 0),
}


@dataclass(frozen=True)
class BertConfig:
    """The ``config.json`` fields a BERT encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path) -> "BertConfig":
        """Read a Hugging Face ``config.json`` of a BERT model."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("model_type", "bert") != "bert" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"{path}: only BERT models with absolute positions are supported")
        if raw.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ModelLoadError(f"{path}: unsupported activation {raw['hidden_act']!r}")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def pooling_modes(folder: Path) -> tuple[str, ...]:
    """Pooling modes switched on in ``1_Pooling/config.json`` (mean pooling if the folder has none)."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return ("mean_tokens",)
    raw = json.loads(path.read_text(encoding="utf-8"))
    unsupported = [k for k, v in raw.items() if k.startswith("pooling_mode_") and v
                   and k.removeprefix("pooling_mode_") not in POOLING_MODES]
    if unsupported:
        raise ModelLoadError(f"{path}: unsupported pooling {unsupported}")
    modes = tuple(m for m in POOLING_MODES if raw.get(f"pooling_mode_{m}"))
    if not modes:
        raise ModelLoadError(f"{path}: no pooling mode enabled")
    return modes


def max_seq_length(folder: Path, cfg: BertConfig) -> int:
    """``max_seq_length`` of ``sentence_bert_config.json`` (else the tokenizer's), capped by the position table."""
    limit = cfg.max_position_embeddings
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = folder / name
        value = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
        if isinstance(value, int) and value > 0:
            return min(value, limit)
    return limit


def load_tokenizer(folder: Path, max_length: int) -> Any:
    """``tokenizers.Tokenizer`` from ``tokenizer.json``, truncating to ``max_length``; padding is done per batch."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependency("the MiniLM text encoder needs 'tokenizers' (pip install tokenizers)") from None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # the file may carry a fixed-length padding setting; batches are padded to their longest
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


# ---- weights without torch ----------------------------------------------------------------------------
def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a read-only numpy view of one memory map (nothing copied)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (size,) = struct.unpack("<Q", data[:8].tobytes())
    header = json.loads(data[8 : 8 + size].tobytes())
    base, out = 8 + size, {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        out[name] = data[base + start : base + end].view(dtype).reshape(meta["shape"])
    return out


def _cached_bin(bin_file: Path) -> dict[str, np.ndarray]:
    """A ``pytorch_model.bin`` converted once (with torch) to an ``.npz`` in the xsearch cache, keyed by its hash."""
    h = hashlib.sha256()
    with open(bin_file, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    cache = Path(os.environ.get("XSEARCH_CACHE") or Path.home() / ".cache" / "xsearch").expanduser()
    path = cache / f"bert-{h.hexdigest()[:20]}.npz"
    if not path.is_file():
        import torch  # once per checkpoint

        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        arrays = {k: v.float().numpy() for k, v in state.items() if not k.endswith("position_ids")}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def load_weights(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays, ``bert.`` prefix removed and unused ones dropped."""
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        state = read_safetensors(safetensors_file)
    elif bin_file.is_file():
        state = _cached_bin(bin_file)
    else:
        raise ModelLoadError(f"{folder}: no model.safetensors or pytorch_model.bin")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    return {k: v if v.dtype == np.float32 else v.astype(np.float32) for k, v in state.items()
            if not k.startswith(IGNORED_WEIGHTS)}


# ---- the network ---------------------------------------------------------------------------------------
def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (statistics in float64, like a careful float32 kernel)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = np.square(x64 - mean).mean(axis=-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps)).astype(np.float32) * weight + bias


class NumpyBert:
    """HF ``BertModel`` without the pooler, inference only: (n, L) ids, type ids, mask -> (n, L, hidden)."""

    def __init__(self, cfg: BertConfig, weights: dict[str, np.ndarray]) -> None:
        self.config = cfg
        self.act = ACTIVATIONS[cfg.hidden_act]
        expected = {f"embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings",
                                                        "token_type_embeddings", "LayerNorm")}
        missing = sorted(expected - set(weights)) + [f"encoder.layer.{i}" for i in range(cfg.num_hidden_layers)
                                                     if f"encoder.layer.{i}.output.dense.weight" not in weights]
        if missing:
            raise ModelLoadError(f"checkpoint lacks {missing[:3]}")
        self.w = weights

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T + b for a torch ``nn.Linear`` named ``name`` (W stays in its stored layout)."""
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.config.layer_norm_eps)

    def _attention(self, x: np.ndarray, keys: np.ndarray, prefix: str, n: int, length: int) -> np.ndarray:
        """Multi-head scaled dot-product self-attention over the unmasked keys, (n*L, hidden) -> (n*L, hidden)."""
        heads = self.config.num_attention_heads
        split = lambda t: t.reshape(n, length, heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(self._linear(x, f"{prefix}.{p}")) for p in ("query", "key", "value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(q.shape[-1]))
        scores = np.where(keys, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        return (probs @ v).transpose(0, 2, 1, 3).reshape(n * length, -1)

    def __call__(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, L) int inputs, mask 1 for real tokens -> (n, L, hidden) float32 token embeddings."""
        n, length = ids.shape
        e = "embeddings"
        x = (self.w[f"{e}.word_embeddings.weight"][ids] + self.w[f"{e}.token_type_embeddings.weight"][type_ids]
             + self.w[f"{e}.position_embeddings.weight"][:length])
        x = self._norm(x, f"{e}.LayerNorm").reshape(n * length, -1)
        keys = mask.astype(bool)[:, None, None, :]
        for i in range(self.config.num_hidden_layers):
            p = f"encoder.layer.{i}"
            attn = self._attention(x, keys, f"{p}.attention.self", n, length)
            x = self._norm(self._linear(attn, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            hidden = self.act(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(hidden, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x.reshape(n, length, -1)


def pool(tokens: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """sentence-transformers ``Pooling`` of (n, L, d) token embeddings, the chosen modes concatenated."""
    m = mask[:, :, None].astype(np.float32)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(tokens[:, 0])
        elif mode == "max_tokens":
            parts.append(np.where(m == 0, np.float32(-1e9), tokens).max(axis=1))
        elif mode == "mean_tokens":
            parts.append((tokens * m).sum(axis=1) / counts)
        else:  # mean_sqrt_len_tokens
            parts.append((tokens * m).sum(axis=1) / np.sqrt(counts))
    return np.concatenate(parts, axis=1)


class SentenceFolder:
    """What the numpy and the torch BERT sentence encoders share: the folder's config, tokenizer, pooling, width."""

    def __init__(self, folder: str | Path, build: Callable[[BertConfig], Any]) -> None:
        self.folder = Path(folder)
        try:
            cfg = BertConfig.from_file(self.folder / "config.json")
            self.max_length = max_seq_length(self.folder, cfg)
            self.modes = pooling_modes(self.folder)
            self.tokenizer = load_tokenizer(self.folder, self.max_length)
            self.model = build(cfg)
        except (ModelLoadError, MissingDependency):
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure means unusable model files
            raise ModelLoadError(f"{self.folder}: cannot load the BERT sentence encoder ({exc})") from None
        self.pad_id = cfg.pad_token_id

    @property
    def dim(self) -> int:
        """Width of the sentence vectors."""
        return self.model.config.hidden_size * len(self.modes)

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        """One ``tokenizers.Encoding`` per text ([CLS] ... [SEP], truncated)."""
        return self.tokenizer.encode_batch(list(texts))

    def _running(self) -> ContextManager[Any]:
        """The context the forward passes run in (one BLAS thread, or torch's inference mode)."""
        return nullcontext()

    def _embed(self, encodings: Sequence[Any]) -> np.ndarray:
        """Pooled, L2-normalised vectors of one padded batch, (n, d) float32."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, d) float32 unit vectors; texts are batched by token length and returned in input order."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encodings = self.tokenize(texts)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids), reverse=True)
        out = np.empty((len(encodings), self.dim), np.float32)
        step = max(1, batch_size)
        with self._running():
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                out[chunk] = self._embed([encodings[i] for i in chunk])
        return out


class NumpySentenceEncoder(SentenceFolder):
    """A BERT sentence-transformers folder as ``encode(texts, batch_size) -> (n, d)`` unit float32 rows, no torch."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder, lambda cfg: NumpyBert(cfg, load_weights(Path(folder))))

    def _embed(self, encodings: Sequence[Any]) -> np.ndarray:
        """Pooled, L2-normalised vectors of one batch padded to its longest text, (n, d) float32."""
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self.pad_id, np.int64)
        types = np.zeros((len(encodings), length), np.int64)
        mask = np.zeros((len(encodings), length), np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)], types[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, e.type_ids, 1
        pooled = pool(self.model(ids, types, mask), mask, self.modes)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def _running(self) -> ContextManager[Any]:
        return one_blas_thread()


def one_blas_thread() -> ContextManager[Any]:
    """Run numpy's BLAS on one thread: these matrices are small, and OpenBLAS's threads cost far more than they
    save (a query took 0.5 s instead of 15 ms with 2 threads on a busy 2-core machine). No-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(1, user_api="blas")
