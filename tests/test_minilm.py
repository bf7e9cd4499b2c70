"""The pure-torch MiniLM runtime (xsearch/encoders/minilm.py) against sentence-transformers on the same files."""
from __future__ import annotations

import os
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
from xsearch.errors import BadInput, ModelLoadError

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


# ---- the numpy runtime (cold text queries without torch) --------------------------------------------------
@pytest.fixture(scope="module")
def numpy_ours():
    from xsearch.encoders.bert_numpy import NumpySentenceEncoder

    return NumpySentenceEncoder(minilm_path())


def test_numpy_runtime_matches_torch(numpy_ours, ours):
    """Same vectors as the torch BERT within 1e-5 on varied texts (empty, unicode, truncated), in any batching."""
    torch_vecs = ours.encode(TEXTS, batch_size=64)
    for batch_size in (64, 1, 7):
        vecs = numpy_ours.encode(TEXTS, batch_size=batch_size)
        assert vecs.shape == (30, 384) and vecs.dtype == np.float32
        assert float(np.max(np.abs(vecs - torch_vecs))) <= 1e-5
    assert numpy_ours.max_length == 256 and numpy_ours.encode([]).shape == (0, 384)


def test_numpy_runtime_reads_pytorch_model_bin_through_the_cache(ours, tmp_path, monkeypatch):
    folder = tmp_path / "minilm-bin"
    shutil.copytree(minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    torch.save({f"bert.{k}": v for k, v in ours.model.state_dict().items()}, folder / "pytorch_model.bin")
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    from xsearch.encoders.bert_numpy import NumpySentenceEncoder

    first = NumpySentenceEncoder(folder).encode(TEXTS[:8])
    assert len(list((tmp_path / "cache").glob("bert-*.npz"))) == 1  # converted once, then read from the cache
    np.testing.assert_allclose(NumpySentenceEncoder(folder).encode(TEXTS[:8]), first, atol=0)
    assert float(np.max(np.abs(first - ours.encode(TEXTS[:8])))) <= 1e-5


def test_mini_runtime_choice(monkeypatch):
    from xsearch.encoders.mini import SMALL_TEXT_BATCH, MiniLMText

    text = MiniLMText("cpu")
    assert text.runtime_name(SMALL_TEXT_BATCH + 1) == "torch"
    assert text.runtime_name(1) == "torch"  # torch is already imported in this process: use it
    monkeypatch.setenv("XSEARCH_TEXT_RUNTIME", "numpy")
    assert text.runtime_name(1000) == "numpy"
    monkeypatch.setenv("XSEARCH_TEXT_RUNTIME", "tensorflow")
    with pytest.raises(BadInput, match="XSEARCH_TEXT_RUNTIME"):
        text.runtime_name(1)


@pytest.mark.needs_data
def test_text_query_does_not_import_torch(tmp_path):
    """A text query of an existing xsearch-mini collection, API and CLI, in fresh interpreters: no torch import."""
    from xsearch import Collection

    home = tmp_path / "home"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.jpg", "rocket.jpg"):
        shutil.copy(ROOT.parent / "shared" / "data" / "dev-photos" / name, photos / name)
    (photos / "note.txt").write_text("a shopping list: milk and bread")
    with Collection.open(home, "c", create=True) as col:
        col.add([photos])
    code = (
        "import sys\n"
        "from xsearch import Collection\n"
        f"col = Collection.open({str(home)!r}, 'c', read_only=True)\n"
        "hits = col.search(text='a cat', k=3) + col.search_many(['a rocket', 'bread'], k=1)[0]\n"
        "print(hits[0].path, hits[-1].path)\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XSEARCH_TEXT_RUNTIME"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [str(photos / "chelsea.jpg"), str(photos / "rocket.jpg")]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "xsearch.cli", "query", "a cat", "--home", str(home),
                           "-c", "c", "--json", "-k", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chelsea.jpg" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported and "torch" not in imported
