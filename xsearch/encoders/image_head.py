"""xsearch-mini's trained image head: frozen EfficientNet-Lite0 features -> the frozen MiniLM space.

    c   = ConSE(logits) / |ConSE(logits)|           (the class-knowledge prior, see ``mini.py``)
    r   = W2 GELU(W1 LayerNorm(pooled) + b1) + b2
    out = normalise(prior * c + scale * r - centre)

``scale`` (< 1 keeps more of ConSE's class knowledge) and ``centre`` (beta x the mean of ``prior * c + scale * r``
over the training photos: removes the direction every photo shares, which otherwise pulls generic captions and
class prompts toward all photos alike) are set after training, chosen on a held-out slice of the training data.

``pooled`` is the 1280-d global-average-pooled last feature map of the same backbone pass, so the head costs one
small MLP per image. Optionally (``attn_heads`` > 0; experiments, not the shipped head) the MLP also reads learned
attention pools of the last feature map (``fmap``, (n, 49, 1280) at 224 px), which ``XsearchMini`` then passes in.
Trained by ``benchmarks/train_image.py`` (symmetric InfoNCE against frozen caption vectors plus distillation terms
that keep the ImageNet classifier's class ranking per photo and its photo ranking per class); shipped as
``weights/image_head.safetensors`` (float16) + ``weights/image_head.json``.
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


class AttnPool(nn.Module):
    """``heads`` learned queries over the map's positions: softmax_p(LayerNorm(x_p) . q_h)-weighted means of ``x``
    (queries start at zero: every head starts as the global mean)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(dim, heads)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(n, positions, dim) -> (n, heads, dim)."""
        weights = torch.softmax(self.query(nn.functional.layer_norm(fmap, (self.dim,))), dim=1)
        return torch.einsum("nph,npd->nhd", weights, fmap)


class ChunkNorm(nn.Module):
    """LayerNorm of each of ``chunks`` stacked ``dim``-vectors, with its own affine part per chunk."""

    def __init__(self, chunks: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(chunks, dim))
        self.bias = nn.Parameter(torch.zeros(chunks, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, chunks, dim) -> (n, chunks * dim)."""
        return (nn.functional.layer_norm(x, x.shape[-1:]) * self.weight + self.bias).flatten(1)


class ImageHead(nn.Module):
    """``normalise(prior * conse_unit + scale * mlp(features) - centre)``; the MLP's last layer starts at zero (= ConSE).

    ``features`` is the pooled vector, or with ``attn_heads`` > 0 the pooled vector (unless ``pooled_input`` is off)
    and ``attn_heads`` attention-pooled vectors of the last feature map (``fmap``: (n, positions, in_dim)), each
    LayerNormed on its own."""

    def __init__(self, in_dim: int = 1280, hidden: int = 1024, out_dim: int = 384, dropout: float = 0.0,
                 prior: float = 1.0, scale: float = 1.0, attn_heads: int = 0, pooled_input: bool = True):
        super().__init__()
        self.spec = {"in_dim": in_dim, "hidden": hidden, "out_dim": out_dim, "dropout": dropout}
        if not (pooled_input or attn_heads):
            raise ValueError("an image head reads the pooled vector, attention pools, or both")
        chunks = int(pooled_input) + attn_heads
        if attn_heads:
            self.spec["attn_heads"] = attn_heads
            self.pool = AttnPool(in_dim, attn_heads)
        if not pooled_input:
            self.spec["pooled_input"] = False
        self.norm = ChunkNorm(chunks, in_dim) if attn_heads else nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(chunks * in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.prior = nn.Parameter(torch.tensor(float(prior)))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.register_buffer("scale", torch.tensor(float(scale)))  # buffers: saved with the weights (and fingerprinted)
        self.register_buffer("centre", torch.zeros(out_dim))

    @property
    def attn_heads(self) -> int:
        """Attention-pooling queries over the feature map (0: the head reads the pooled vector only)."""
        return int(self.spec.get("attn_heads", 0))

    @property
    def pooled_input(self) -> bool:
        """Whether the MLP reads the global-pooled vector (always, without attention pools)."""
        return bool(self.spec.get("pooled_input", True))

    def calibrate(self, scale: float, centre: torch.Tensor) -> None:
        """Set the post-training ``scale`` of the residual and the ``centre`` subtracted before normalising."""
        with torch.no_grad():
            self.scale.fill_(float(scale))
            self.centre.copy_(centre)

    def features(self, pooled: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised MLP input: pooled (n, in_dim), plus attention pools of ``fmap`` when the head has them."""
        if not self.attn_heads:
            return self.norm(pooled)
        if fmap is None:
            raise ValueError("this image head attention-pools the feature map: pass fmap (n, positions, in_dim)")
        parts = [pooled[:, None]] if self.pooled_input else []
        return self.norm(torch.cat([*parts, self.pool(fmap)], dim=1))

    def residual(self, pooled: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP's correction of the ConSE vector (before ``scale``)."""
        return self.fc2(self.drop(nn.functional.gelu(self.fc1(self.features(pooled, fmap)))))

    def unnormalised(self, pooled: torch.Tensor, conse_unit: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        """``prior * c + scale * r - centre`` (what ``forward`` normalises)."""
        return self.prior * conse_unit + self.scale * self.residual(pooled, fmap) - self.centre

    def forward(self, pooled: torch.Tensor, conse_unit: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.normalize(self.unnormalised(pooled, conse_unit, fmap), dim=-1)


def merge(heads: list[ImageHead]) -> ImageHead:
    """One head whose residual is the mean of ``heads``' residuals (hidden layers side by side, attention queries
    side by side; each LayerNorm's affine part folded into its first layer, so the merged head is an ordinary
    ``ImageHead``)."""
    if len(heads) == 1:
        return heads[0]
    a, dim = heads[0], heads[0].spec["in_dim"]
    if len({h.pooled_input for h in heads}) > 1:
        raise ValueError("cannot merge image heads that differ in reading the pooled vector")
    n_attn, first = sum(h.attn_heads for h in heads), int(a.pooled_input)  # chunks: [pooled], attention pools
    out = ImageHead(dim, sum(h.spec["hidden"] for h in heads), a.spec["out_dim"], attn_heads=n_attn,
                    pooled_input=a.pooled_input)
    with torch.no_grad():
        out.fc1.weight.zero_()
        row, query = 0, 0
        for h in heads:
            w = h.fc1.weight * h.norm.weight.flatten()  # (hidden, chunks * dim), affine folded
            rows = slice(row, row + h.spec["hidden"])
            out.fc1.weight[rows, :first * dim] = w[:, :first * dim]  # the pooled chunk is shared
            out.fc1.weight[rows, (first + query) * dim:(first + query + h.attn_heads) * dim] = w[:, first * dim:]
            out.fc1.bias[rows] = h.fc1.weight @ h.norm.bias.flatten() + h.fc1.bias
            if h.attn_heads:
                out.pool.query.weight[query:query + h.attn_heads] = h.pool.query.weight
                out.pool.query.bias[query:query + h.attn_heads] = h.pool.query.bias
            row, query = row + h.spec["hidden"], query + h.attn_heads
        out.norm.weight.fill_(1.0)
        out.norm.bias.zero_()
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
        head = ImageHead(int(spec["in_dim"]), int(spec["hidden"]), int(spec["out_dim"]),
                         attn_heads=int(spec.get("attn_heads", 0)), pooled_input=bool(spec.get("pooled_input", True)))
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        for name, default in (("scale", head.scale), ("centre", head.centre)):  # heads written before they existed
            state.setdefault(name, default.clone())
        head.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - json / safetensors / shape errors all mean the same thing here
        raise ModelLoadError(f"{weights}: cannot load xsearch-mini's image head ({str(exc).splitlines()[0]})") from None
    return head.eval().to(device)
