"""xsearch-mini's trained image head: frozen EfficientNet-Lite0 features -> the frozen MiniLM space.

    c   = ConSE(logits) / |ConSE(logits)|           (the class-knowledge prior, see ``mini.py``)
    r   = W2 GELU(W1 LayerNorm(pooled) + b1) + b2
    out = normalise(prior * c + scale * r - centre)

``scale`` (< 1 keeps more of ConSE's class knowledge) and ``centre`` (beta x the mean of ``prior * c + scale * r``
over the training photos: removes the direction every photo shares, which otherwise pulls generic captions and
class prompts toward all photos alike) are set after training, chosen on a held-out slice of the training data.

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
    """``normalise(prior * conse_unit + scale * mlp(pooled) - centre)``; the MLP's last layer starts at zero (= ConSE)."""

    def __init__(self, in_dim: int = 1280, hidden: int = 1024, out_dim: int = 384, dropout: float = 0.0,
                 prior: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.spec = {"in_dim": in_dim, "hidden": hidden, "out_dim": out_dim, "dropout": dropout}
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.prior = nn.Parameter(torch.tensor(float(prior)))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.register_buffer("scale", torch.tensor(float(scale)))  # buffers: saved with the weights (and fingerprinted)
        self.register_buffer("centre", torch.zeros(out_dim))

    def calibrate(self, scale: float, centre: torch.Tensor) -> None:
        """Set the post-training ``scale`` of the residual and the ``centre`` subtracted before normalising."""
        with torch.no_grad():
            self.scale.fill_(float(scale))
            self.centre.copy_(centre)

    def residual(self, pooled: torch.Tensor) -> torch.Tensor:
        """The MLP's correction of the ConSE vector (before ``scale``)."""
        return self.fc2(self.drop(nn.functional.gelu(self.fc1(self.norm(pooled)))))

    def unnormalised(self, pooled: torch.Tensor, conse_unit: torch.Tensor) -> torch.Tensor:
        """``prior * c + scale * r - centre`` (what ``forward`` normalises)."""
        return self.prior * conse_unit + self.scale * self.residual(pooled) - self.centre

    def forward(self, pooled: torch.Tensor, conse_unit: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.unnormalised(pooled, conse_unit), dim=-1)


def merge(heads: list[ImageHead]) -> ImageHead:
    """One head whose residual is the mean of ``heads``' residuals (hidden layers side by side; each LayerNorm's
    affine part folded into its first layer, so the merged head is an ordinary ``ImageHead``)."""
    if len(heads) == 1:
        return heads[0]
    a = heads[0]
    out = ImageHead(a.spec["in_dim"], sum(h.spec["hidden"] for h in heads), a.spec["out_dim"])
    with torch.no_grad():
        out.fc1.weight.copy_(torch.cat([h.fc1.weight * h.norm.weight for h in heads]))
        out.fc1.bias.copy_(torch.cat([h.fc1.weight @ h.norm.bias + h.fc1.bias for h in heads]))
        out.fc2.weight.copy_(torch.cat([h.fc2.weight for h in heads], dim=1) / len(heads))
        out.fc2.bias.copy_(torch.stack([h.fc2.bias for h in heads]).mean(dim=0))
        out.prior.copy_(torch.stack([h.prior for h in heads]).mean())
    return out.eval()


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
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        for name, default in (("scale", head.scale), ("centre", head.centre)):  # heads written before they existed
            state.setdefault(name, default.clone())
        head.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - json / safetensors / shape errors all mean the same thing here
        raise ModelLoadError(f"{weights}: cannot load xsearch-mini's image head ({str(exc).splitlines()[0]})") from None
    return head.eval().to(device)
