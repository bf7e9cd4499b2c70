"""The pure-torch MiniLM runtime (xsearch/encoders/minilm.py) against sentence-transformers on the same files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.encoders.base import l2_normalize
from xsearch.encoders.mini import (CLASSES_FILE, BridgeConfig, _mean_prompt_vectors, class_matrix, class_matrix_key,
                                   imagenet_classes, minilm_path)
from xsearch.encoders.minilm import SentenceEncoder
from xsearch.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]

TEXTS = [
    "",
    " ",
    "a cat",
    "A CAT",
    "a Cat sitting on a MAT",
    "dog",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing whitespace   ",
    "tabs\tand\nnew\nlines",
    "!!!",
    "?!.,;:'\"()[]{}<>@#$%^&*-_=+/\\|~`",
    "Hello, world! How's it going?",
    "naïve café façade résumé",
    "Ünïcödé ÀÉÎÕÜ straße",
    "東京の猫",
    "猫が好きです。",
    "Москва — столица России",
    "مرحبا بالعالم",
    "emoji 🐱🐶🚀 party 🎉",
    "e-mail: someone@example.com, url https://example.org/a?b=c",
    "1234567890 3.14159 1e-9 $100",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "a photo of a tabby cat.",
    "a bowl of soup",
    "rocket launch at night",
    "x" * 600,
    "word " * 400,  # far more than 256 tokens: truncated
    " ".join(f"token{i}" for i in range(300)),
    "Long text. " * 120,
    "a photo of a golden retriever playing in the snow with a red ball",
]


@pytest.fixture(scope="module")
def ours() -> SentenceEncoder:
    return SentenceEncoder(minilm_path(), device="cpu")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def _assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == np.float32
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.9999
    assert float(np.max(np.abs(a - b))) < 1e-4


def test_matches_sentence_transformers(ours, reference):
    assert len(TEXTS) == 30 and reference.shape == (30, 384)
    _assert_same(ours.encode(TEXTS, batch_size=64), reference)


def test_batching_and_order(ours, reference):
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    _assert_same(ours.encode([TEXTS[i] for i in perm], batch_size=4), reference[perm])


def test_xsearch_mini_text_tower_matches(mini, reference):
    _assert_same(mini.encode_text(TEXTS), reference)


def test_shape_truncation_and_empty(ours):
    out = ours.encode(["a cat", ""])
    assert out.shape == (2, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert ours.encode([]).shape == (0, 384)
    assert ours.max_length == 256 and max(len(e.ids) for e in ours.tokenize(TEXTS)) == 256


def test_pytorch_model_bin_fallback(ours, tmp_path):
    folder = tmp_path / "minilm-bin"
    shutil.copytree(minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    state = {f"bert.{k}": v for k, v in ours.model.state_dict().items()}  # older checkpoints carry a prefix
    torch.save(state, folder / "pytorch_model.bin")
    np.testing.assert_allclose(SentenceEncoder(folder).encode(TEXTS[:8]), ours.encode(TEXTS[:8]), atol=1e-6)


def test_unusable_folder_is_model_load_error(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        SentenceEncoder(folder)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        SentenceEncoder(folder)


def test_no_transformers_import():
    code = (
        "import sys\n"
        "from xsearch.encoders import create\n"
        "import xsearch.encoders.minilm\n"
        "v = create('xsearch-mini').encode_text(['a cat', 'a dog'])\n"
        "assert v.shape == (2, 384), v.shape\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'sentence_transformers'))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shipped_class_matrix_is_used():
    """The shipped table's key depends on the model files only, so it is found and nothing is re-embedded."""
    shipped = CLASSES_FILE.parent / f"mini-classes-{class_matrix_key(BridgeConfig())}.npy"
    assert shipped.is_file()

    def must_not_encode(texts, batch_size=64):
        raise AssertionError("the shipped class matrix was rebuilt")

    np.testing.assert_array_equal(class_matrix(BridgeConfig(), must_not_encode), np.load(shipped))


def test_shipped_class_matrix_agrees_with_this_runtime(ours):
    """Rows of the shipped table (built with sentence-transformers) are reproduced by the torch runtime."""
    config = BridgeConfig()
    rows = [0, 1, 207, 281, 404, 999]
    classes = [imagenet_classes()[i] for i in rows]
    names = [[c.name] for c in classes]
    synonyms = [list(dict.fromkeys([c.name, *c.synonyms])) for c in classes]
    prompts = list(dict.fromkeys(t.format(n) for ns in synonyms for n in ns for t in config.templates))
    table = dict(zip(prompts, ours.encode(prompts)))
    name_vec = _mean_prompt_vectors(names, config.templates, table)
    syn_vec = _mean_prompt_vectors(synonyms, config.templates, table)
    gloss_vec = ours.encode([c.gloss for c in classes])
    mine = l2_normalize(l2_normalize(name_vec + syn_vec) + config.gloss_weight * gloss_vec)
    shipped = np.load(CLASSES_FILE.parent / f"mini-classes-{class_matrix_key(config)}.npy")[rows]
    assert float(np.max(np.abs(mine - shipped))) < 1e-4
