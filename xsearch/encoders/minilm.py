"""A small pure-torch BERT sentence encoder for sentence-transformers folders such as all-MiniLM-L6-v2.

Runs a saved ``BertModel`` + ``Pooling`` (+ ``Normalize``) sentence-transformers model with only ``torch``,
``tokenizers`` and (when the weights are ``model.safetensors``) ``safetensors``: no ``transformers`` or
``sentence_transformers`` import, which saves several seconds of start-up. The network is HF ``BertModel``
layer for layer (absolute positions, post-LN, inference only: dropout is a no-op and left out), so the vectors
match ``SentenceTransformer(folder).encode(texts, normalize_embeddings=True)`` to float rounding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .bert_numpy import IGNORED_WEIGHTS, BertConfig, SentenceFolder

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# ---- the network (parameter names follow HF BertModel so checkpoints load as they are) ----------------------
class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        """(n, L) token ids and type ids -> (n, L, hidden)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings(type_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """The query/key/value projections of one layer."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(n, L, hidden) -> (n, heads, L, head_dim)."""
        n, length, hidden = x.shape
        return x.view(n, length, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention over the unmasked keys, heads merged back to (n, L, hidden)."""
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(head_dim)
        return out.transpose(1, 2).reshape(x.shape)


class AddNorm(nn.Module):
    """Dense projection added to the residual, then LayerNorm (BERT's post-LN "output" block)."""

    def __init__(self, cfg: BertConfig, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(x) + residual)."""
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Self-attention plus its output block."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention sub-layer with residual and LayerNorm."""
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """The first feed-forward projection and its activation."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act(dense(x))."""
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One transformer encoder layer: attention, then the feed-forward block."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, L, hidden) -> (n, L, hidden)."""
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The stack of encoder layers."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run every layer in turn."""
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Bert(nn.Module):
    """HF ``BertModel`` without the pooler: token ids -> last hidden states."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, L) inputs, attention_mask 1 for real tokens -> (n, L, hidden) token embeddings."""
        keys = attention_mask.bool()[:, None, None, :]  # (n, 1, 1, L): which keys each query may attend to
        return self.encoder(self.embeddings(ids, type_ids), keys)


# ---- pooling -------------------------------------------------------------------------------------------
def pool(tokens: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """sentence-transformers ``Pooling``: the chosen poolings of (n, L, d) token embeddings, concatenated."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    counts = m.sum(dim=1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(tokens[:, 0])
        elif mode == "max_tokens":
            parts.append(tokens.masked_fill(m == 0, -1e9).max(dim=1).values)
        elif mode == "mean_tokens":
            parts.append((tokens * m).sum(dim=1) / counts)
        else:  # mean_sqrt_len_tokens
            parts.append((tokens * m).sum(dim=1) / counts.sqrt())
    return torch.cat(parts, dim=1)


# ---- loading -------------------------------------------------------------------------------------------
def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``model.safetensors``, else ``pytorch_model.bin``), ``bert.`` prefix removed."""
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors_file), device="cpu")
    elif bin_file.is_file():
        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"{folder}: no model.safetensors or pytorch_model.bin")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_WEIGHTS)}


def _loaded_bert(cfg: BertConfig, folder: Path) -> "Bert":
    """A ``Bert`` with the folder's weights (strict: every tensor must match)."""
    model = Bert(cfg)
    model.load_state_dict(load_weights(folder), strict=True)
    return model


class SentenceEncoder(SentenceFolder):
    """A BERT sentence-transformers folder as ``encode(texts, batch_size) -> (n, d)`` unit float32 rows."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        super().__init__(folder, lambda cfg: _loaded_bert(cfg, Path(folder)))
        self.device = device
        self.model.eval().to(device)

    def _batch_tensors(self, encodings: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad encodings to their longest: ids, type ids and attention mask, (n, L) int64 on the device."""
        length = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), length), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(encodings), length), dtype=torch.long)
        mask = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids), 1
        return ids.to(self.device), types.to(self.device), mask.to(self.device)

    def _running(self) -> ContextManager[Any]:
        return torch.inference_mode()

    def _embed(self, encodings: Sequence[Any]) -> np.ndarray:
        """Pooled, L2-normalised vectors of one batch, (n, d) float32."""
        ids, types, mask = self._batch_tensors(encodings)
        pooled = pool(self.model(ids, types, mask), mask, self.modes)
        return F.normalize(pooled.float(), p=2, dim=1).cpu().numpy()
