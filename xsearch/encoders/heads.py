"""Trainable heads placed on frozen features: linear / residual-MLP adapters, described by a JSON-able spec.

Pure torch. They live with the encoders because ``align:`` encoders rebuild them at load time; the trainer imports them.
Heads start at (or near) the identity where they can, so training begins from the base encoder's space:

- ``skip="identity"`` (in == out): ``y = x + mlp(x)``,
- ``skip="slice"`` (in > out, the base embedding first in the feature vector): ``y = x[:, :out] + mlp(x)``,
- ``skip="linear"``: ``y = W x + mlp(x)`` (a learned projection, for features of another size),
- ``skip="none"``: ``y = mlp(x)``.

The MLP branch's last layer starts at zero, so with an identity/slice skip the untrained head is exactly the
base encoder.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

SKIPS = ("identity", "slice", "linear", "none")


class ResidualMLP(nn.Module):
    """``skip(x) + Linear(GELU(Linear(LayerNorm(x))))`` with a zero-initialised last layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, skip: str = "identity", dropout: float = 0.1):
        super().__init__()
        if skip not in SKIPS:
            raise ValueError(f"unknown skip {skip!r}; use one of {SKIPS}")
        if skip == "identity" and in_dim != out_dim:
            raise ValueError(f"identity skip needs in_dim == out_dim, got {in_dim} -> {out_dim}")
        if skip == "slice" and in_dim < out_dim:
            raise ValueError(f"slice skip needs in_dim >= out_dim, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.skip = in_dim, out_dim, skip
        self.proj = nn.Linear(in_dim, out_dim, bias=False) if skip == "linear" else None
        if hidden > 0:
            self.mlp: nn.Module | None = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(hidden, out_dim),
            )
            last = self.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            self.mlp = None
            if skip == "none":
                raise ValueError("a head needs hidden > 0 or a skip connection")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip == "identity":
            y = x
        elif self.skip == "slice":
            y = x[:, : self.out_dim]
        elif self.skip == "linear":
            y = self.proj(x)  # type: ignore[misc]
        else:
            y = torch.zeros(x.shape[0], self.out_dim, dtype=x.dtype, device=x.device)
        return y + self.mlp(x) if self.mlp is not None else y


class LinearHead(nn.Module):
    """``W x + b``; starts as the identity when ``in_dim == out_dim`` (else a scaled random projection)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        nn.init.zeros_(self.linear.bias)
        if in_dim == out_dim:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


HeadFactory = Callable[[dict[str, Any]], nn.Module]
HEAD_TYPES: dict[str, HeadFactory] = {
    "residual_mlp": lambda s: ResidualMLP(s["in_dim"], s["out_dim"], s.get("hidden", 512), s.get("skip", "identity"),
                                          s.get("dropout", 0.1)),
    "linear": lambda s: LinearHead(s["in_dim"], s["out_dim"]),
}


def register_head(kind: str, factory: HeadFactory) -> None:
    """Make a custom head type (e.g. a whole audio tower) buildable from its spec ``{"type": kind, ...}``."""
    HEAD_TYPES[kind] = factory


def build_head(spec: dict[str, Any]) -> nn.Module:
    """Build a head from its spec (``type`` plus constructor fields)."""
    kind = spec.get("type")
    if kind not in HEAD_TYPES:
        raise ValueError(f"unknown head type {kind!r}; known: {', '.join(sorted(HEAD_TYPES))}")
    return HEAD_TYPES[kind](spec)


def default_head_spec(in_dim: int, out_dim: int, hidden: int = 512, dropout: float = 0.1,
                      skip: str | None = None) -> dict[str, Any]:
    """A residual MLP; its skip defaults to identity when the dims match, else a learned linear projection."""
    skip = skip or ("identity" if in_dim == out_dim else "linear")
    return {"type": "residual_mlp", "in_dim": in_dim, "out_dim": out_dim, "hidden": hidden, "skip": skip,
            "dropout": dropout}
