"""Symmetric InfoNCE (CLIP loss) with a learnable temperature."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the in-batch similarity matrix of two L2-normalised batches.

    ``logit_scale`` is learnable (stored as log 1/temperature, clamped to at most 100 as in CLIP).
    With ``hard_negative_weight > 0`` the hardest off-diagonal logit of each row is up-weighted.
    """

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0):
        super().__init__()
        value = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(value) if learnable else nn.Parameter(value, requires_grad=False)
        self.max_log_scale = math.log(max_scale)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor, hard_negative_weight: float = 0.0) -> torch.Tensor:
        logits = self.scale() * a @ b.t()
        return symmetric_infonce(logits, hard_negative_weight)


def symmetric_infonce(logits: torch.Tensor, hard_negative_weight: float = 0.0) -> torch.Tensor:
    """Mean of row-wise and column-wise cross-entropy with the diagonal as targets."""
    if hard_negative_weight > 0:
        logits = _upweight_hardest(logits, hard_negative_weight)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def _upweight_hardest(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Add ``log(1 + weight)`` to each row's hardest negative (equivalent to counting it 1+weight times)."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    masked = logits.masked_fill(eye, float("-inf"))
    hardest = masked.argmax(dim=1)
    bonus = torch.zeros_like(logits)
    bonus[torch.arange(n, device=logits.device), hardest] = math.log1p(weight)
    return logits + bonus
