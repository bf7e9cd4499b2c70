"""xsearch-mini's trained image head: frozen EfficientNet-Lite0 features -> the frozen MiniLM space.

    c   = ConSE(logits) / |ConSE(logits)|           (the class-knowledge prior, see ``mini.py``)
    out = normalise(prior * c + W2 GELU(W1 LayerNorm(pooled) + b1) + b2)

``pooled`` is the 1280-d global-average-pooled last feature map of the same backbone pass, so the head costs one
small MLP per image. Trained by ``benchmarks/train_image.py`` (symmetric InfoNCE against frozen caption vectors plus
a distillation term that keeps the ImageNet classifier's class ranking); shipped as ``weights/image_head.safetensors``
(float16) + ``weights/image_head.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

WEIGHTS_DIR = Path(__file__).with_name("weights")
NAME = "image_head"
FORMAT = "xsearch-mini-image-head"


class ImageHead(nn.Module):
    """``normalise(prior * conse_unit + mlp(pooled))``; the MLP's last layer starts at zero (= plain ConSE)."""

    def __init__(self, in_dim: int = 1280, hidden: int = 1024, out_dim: int = 384, dropout: float = 0.0,
                 prior: float = 1.0):
        super().__init__()
        self.spec = {"in_dim": in_dim, "hidden": hidden, "out_dim": out_dim, "dropout": dropout}
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.prior = nn.Parameter(torch.tensor(float(prior)))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, pooled: torch.Tensor, conse_unit: torch.Tensor) -> torch.Tensor:
        residual = self.fc2(self.drop(nn.functional.gelu(self.fc1(self.norm(pooled)))))
        return nn.functional.normalize(self.prior * conse_unit + residual, dim=-1)


def files(folder: Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """(weights, config) paths of the head in ``folder``."""
    return folder / f"{NAME}.safetensors", folder / f"{NAME}.json"


def save(head: ImageHead, folder: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """Write the head as float16 safetensors + a JSON config (sorted keys, no timestamps: reproducible bytes)."""
    from safetensors.torch import save_file

    weights, config = files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(weights), metadata={"format": FORMAT})
    config.write_text(json.dumps({"format": FORMAT, "version": 1, **head.spec, **extra}, indent=2, sort_keys=True) + "\n")
    return weights, config


def load(folder: Path = WEIGHTS_DIR, device: str = "cpu") -> ImageHead | None:
    """The shipped head in eval mode (float32), or ``None`` when ``folder`` holds none."""
    from safetensors.torch import load_file

    weights, config = files(folder)
    if not weights.is_file() or not config.is_file():
        return None
    try:
        spec = json.loads(config.read_text())
        head = ImageHead(int(spec["in_dim"]), int(spec["hidden"]), int(spec["out_dim"]))
        head.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    except Exception as exc:  # noqa: BLE001 - json / safetensors / shape errors all mean the same thing here
        raise ModelLoadError(f"{weights}: cannot load xsearch-mini's image head ({str(exc).splitlines()[0]})") from None
    return head.eval().to(device)
