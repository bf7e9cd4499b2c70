"""``align:<folder>``: a base encoder plus heads trained by ``xsearch train``, saved as config.json + safetensors.

The folder holds ``config.json`` (format, version, base encoder id, dim, one entry per modality with the frozen
feature kind and the head spec, training metrics, seed) and ``heads.safetensors`` (``<modality>.<param>``).
Modalities with a head are embedded as ``head(features(base, input))``; the base encoder's other modalities
pass through unchanged (when their dim matches).

Feature kinds (what the frozen base gives a head):

- ``embed``: the base encoder's own output vector (any base, any modality),
- ``pooled``: EfficientNet-Lite0 global-pooled 1280-d features of the base's preprocessed image (xsearch-mini),
- ``embed+pooled``: both, concatenated (embed first, so a ``slice`` skip starts from the base space).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, ModelLoadError, SchemaTooNew
from .base import AudioInput, Encoder, l2_normalize

FORMAT = "xsearch-align"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "heads.safetensors"
FEATURE_KINDS = ("embed", "pooled", "embed+pooled")
POOLED_DIM = 1280
POOLED_BASES = ("xsearch-mini",)


# ---- frozen features ---------------------------------------------------------------------------
def check_feature_kind(base: Encoder, modality: str, kind: str) -> None:
    """``BadInput`` if ``base`` cannot give ``kind`` features for ``modality``."""
    if kind not in FEATURE_KINDS:
        raise BadInput(f"unknown feature kind '{kind}'; use one of {', '.join(FEATURE_KINDS)}")
    if not base.supports(modality):
        raise BadInput(f"base encoder '{base.id}' cannot embed {modality}")
    if kind != "embed" and (modality != "image" or base.id not in POOLED_BASES):
        raise BadInput(f"feature kind '{kind}' is only available for images with base {', '.join(POOLED_BASES)}")


def feature_dim(base: Encoder, kind: str) -> int:
    return {"embed": base.dim, "pooled": POOLED_DIM, "embed+pooled": base.dim + POOLED_DIM}[kind]


def image_batch_features(base: Encoder, batch, kind: str) -> np.ndarray:
    """Frozen ``kind`` features of a stacked batch of ``base.preprocess_image`` tensors.

    ``pooled`` kinds exist only for ``POOLED_BASES`` (see :func:`check_feature_kind`), whose
    ``encode_image_features`` gives the embedding and the pooled features in one backbone pass.
    """
    if kind == "embed":
        return np.asarray(base.encode_image_batch(batch), dtype=np.float32)
    embed, pooled = base.encode_image_features(batch)
    parts = [pooled] if kind == "pooled" else [embed, pooled]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)


def features(base: Encoder, modality: str, kind: str, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """Frozen features of ``inputs`` (texts, image paths/PIL images, or audio clips/paths) for a head."""
    if modality == "text":
        return base.encode_text(list(inputs), batch_size=max(batch_size, 64))
    if modality == "audio":
        return base.encode_audio(list(inputs), batch_size=batch_size)
    import torch

    from ..media import load_image

    out = [np.zeros((0, feature_dim(base, kind)), np.float32)]
    for start in range(0, len(inputs), batch_size):
        chunk = [load_image(im) if isinstance(im, (str, Path)) else im for im in inputs[start : start + batch_size]]
        batch = torch.stack([base.preprocess_image(im.convert("RGB")) for im in chunk])
        out.append(image_batch_features(base, batch, kind))
    return np.concatenate(out)


# ---- the encoder -------------------------------------------------------------------------------
@dataclass
class HeadEntry:
    """One modality's trained head: the frozen feature kind it reads and its spec + module."""

    features: str
    spec: dict[str, Any]
    module: Any = field(repr=False, default=None)


class AlignedEncoder(Encoder):
    """A base encoder whose per-modality outputs go through trained heads."""

    def __init__(self, base: Encoder, heads: dict[str, HeadEntry], encoder_id: str, config: dict[str, Any] | None = None):
        self.base, self.heads, self.id = base, heads, encoder_id
        self.config = config or {}
        dims = {int(h.spec["out_dim"]) for h in heads.values()}
        if len(dims) != 1:
            raise ModelLoadError(f"{encoder_id}: heads disagree on the output dim ({sorted(dims)})")
        self.dim = dims.pop()
        passthrough = {m for m in base.modalities if m not in heads and base.dim == self.dim}
        self.modalities = frozenset(heads) | frozenset(passthrough)
        for h in heads.values():
            h.module.eval()

    @property
    def fingerprint(self) -> str:  # type: ignore[override]
        """The base encoder's: new base weights change every vector, so collections built before must re-embed."""
        return self.base.fingerprint

    def _apply(self, modality: str, feats: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self.heads[modality].module(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)))
        return l2_normalize(y.numpy())

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self._require("text")
        if "text" not in self.heads:
            return self.base.encode_text(texts, batch_size)
        return self._apply("text", features(self.base, "text", self.heads["text"].features, texts, batch_size))

    def preprocess_image(self, image):
        self._require("image")
        return self.base.preprocess_image(image)

    def encode_image_batch(self, batch) -> np.ndarray:
        self._require("image")
        if "image" not in self.heads:
            return self.base.encode_image_batch(batch)
        return self._apply("image", image_batch_features(self.base, batch, self.heads["image"].features))

    def encode_audio(self, clips: Sequence[AudioInput], batch_size: int = 16) -> np.ndarray:
        self._require("audio")
        if "audio" not in self.heads:
            return self.base.encode_audio(clips, batch_size)
        return self._apply("audio", features(self.base, "audio", self.heads["audio"].features, clips, batch_size))


# ---- save / load -------------------------------------------------------------------------------
def save(folder: str | Path, base_id: str, heads: dict[str, HeadEntry], extra: dict[str, Any] | None = None) -> Path:
    """Write ``heads.safetensors`` then ``config.json`` (each atomically; config last) into ``folder``."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path, atomic_write_bytes

    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{m}.{k}": v.detach().cpu().contiguous()
               for m, h in heads.items() for k, v in h.module.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    dims = {int(h.spec["out_dim"]) for h in heads.values()}
    config = {"format": FORMAT, "version": VERSION, "base": base_id, "dim": dims.pop() if len(dims) == 1 else None,
              "heads": {m: {"features": h.features, "spec": h.spec} for m, h in heads.items()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2, default=_jsonable) + "\n").encode())
    return folder


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json, checked for format and version."""
    path = Path(folder).expanduser() / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no trained encoder here (missing {CONFIG_NAME}; "
                             "make one with `xsearch train`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable encoder config ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not an xsearch trained-encoder config (format != '{FORMAT}')")
    if int(config.get("version", 0)) > VERSION:
        raise SchemaTooNew(f"{path}: written by a newer xsearch (format version {config['version']} > {VERSION})")
    return config


def load(arg: str) -> AlignedEncoder:
    """Registry entry point: ``align:<folder>`` -> the trained encoder (its base built through the registry)."""
    from safetensors.torch import load_file

    from .heads import build_head

    folder = Path(arg).expanduser().resolve()
    config = read_config(folder)
    base = _base_encoder(str(config.get("base", "")))
    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except FileNotFoundError:
        raise ModelLoadError(f"{folder / WEIGHTS_NAME}: missing head weights") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise ModelLoadError(f"{folder / WEIGHTS_NAME}: unreadable head weights ({str(exc).splitlines()[0]})") from None
    heads = {}
    for modality, entry in config.get("heads", {}).items():
        try:
            module = build_head(entry["spec"])
            prefix = f"{modality}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except (KeyError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0]
            raise ModelLoadError(f"{folder}: head for {modality} does not fit its weights ({reason})") from None
        heads[modality] = HeadEntry(entry["features"], entry["spec"], module)
    if not heads:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: no heads listed")
    return AlignedEncoder(base, heads, f"align:{folder}", config)


def _base_encoder(name: str) -> Encoder:
    """The base encoder (shared with every other user of the same name through the registry cache)."""
    from .registry import create

    if name.startswith("align:"):
        raise ModelLoadError(f"base encoder '{name}' is itself a trained encoder (nesting is not supported)")
    return create(name)
