"""The ``openclip:`` and ``st:`` backends on tiny real models built here, and the registry around them."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_models import TINY_CLIP_NAME, TINY_ST_DIM, make_tiny_openclip, make_tiny_st, save_openclip_folder
from xsearch.encoders import create
from xsearch.encoders import openclip as oc
from xsearch.encoders.registry import clear_cache
from xsearch.errors import BadInput, ModelLoadError, UnknownEncoder

TEXTS = ["a photo of a cat", "a red sports car", "a bowl of soup"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(3)]


def _unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def _ref_text(tiny, texts) -> np.ndarray:
    import torch

    with torch.no_grad():
        v = tiny.model.encode_text(tiny.tokenizer(texts)).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ref_images(tiny, images) -> np.ndarray:
    import torch

    with torch.no_grad():
        v = tiny.model.encode_image(torch.stack([tiny.preprocess(im) for im in images])).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_openclip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip_enc(tiny):
    return create(tiny.name, cache=False)


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-st") / "model"
    return folder, make_tiny_st(folder)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """An empty Hugging Face cache and home, so pretrained tags are surely not cached."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "hf"


def _fake_hub_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Lay ``files`` out as huggingface_hub's cache does for a downloaded ``repo`` (refs/main -> snapshot)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


# ---- openclip: ------------------------------------------------------------------------------
def test_openclip_config_json_checkpoint_round_trip(tiny, clip_enc):
    assert clip_enc.id == tiny.name and clip_enc.dim == 16 and clip_enc.modalities == {"text", "image"}
    text = clip_enc.encode_text(TEXTS)
    _unit_rows(text, 3, 16)
    np.testing.assert_allclose(text, _ref_text(tiny, TEXTS), atol=1e-5)  # the saved weights were really loaded
    images = clip_enc.encode_images(_images())
    _unit_rows(images, 3, 16)
    np.testing.assert_allclose(images, _ref_images(tiny, _images()), atol=1e-5)
    assert not np.allclose(text[0], text[1])


def test_openclip_batches_and_edge_inputs(clip_enc):
    whole = clip_enc.encode_text(TEXTS)
    np.testing.assert_allclose(clip_enc.encode_text(TEXTS, batch_size=1), whole, atol=1e-5)
    assert clip_enc.encode_text([]).shape == (0, 16)
    assert clip_enc.encode_image_batch(clip_enc.preprocess_image(_images()[0])[None][:0]).shape == (0, 16)
    with pytest.raises(BadInput):
        clip_enc.encode_text("one string")
    with pytest.raises(BadInput):
        clip_enc.encode_audio([(np.zeros(16000, np.float32), 16000)])


def test_openclip_preprocess_is_picklable_without_weights(clip_enc):
    blob = pickle.dumps(clip_enc.preprocess_image)
    assert len(blob) < 100_000  # the transform travels to decode workers, not the model
    image = _images()[0]
    copy = pickle.loads(blob)
    assert copy(image).shape == (3, 32, 32)
    np.testing.assert_array_equal(copy(image).numpy(), clip_enc.preprocess_image(image).numpy())
    clone = pickle.loads(pickle.dumps(clip_enc))  # a copy in another process reloads the model lazily
    np.testing.assert_allclose(clone.encode_text(TEXTS[:1]), clip_enc.encode_text(TEXTS[:1]), atol=1e-6)


def test_openclip_registered_arch_with_relative_checkpoint(tiny, clip_enc, monkeypatch):
    import open_clip

    open_clip.add_model_config(tiny.config)  # what a user does for a custom architecture in their own code
    monkeypatch.chdir(tiny.checkpoint.parent.parent)
    rel = Path(tiny.checkpoint.parent.name) / tiny.checkpoint.name
    enc = create(f"openclip:{TINY_CLIP_NAME}/{rel}", cache=False)
    assert enc.id == f"openclip:{TINY_CLIP_NAME}/{tiny.checkpoint}"  # canonical: absolute path
    np.testing.assert_allclose(enc.encode_text(TEXTS), clip_enc.encode_text(TEXTS), atol=1e-6)


def test_openclip_local_folder_and_hub_cache(tiny, tmp_path, empty_caches):
    folder = save_openclip_folder(tiny, tmp_path / "clip-folder")
    enc = create(f"openclip:{folder}", cache=False)
    assert enc.id == f"openclip:{folder.resolve()}" and enc.dim == 16
    np.testing.assert_allclose(enc.encode_text(TEXTS), _ref_text(tiny, TEXTS), atol=1e-5)
    # preprocess_cfg of the folder is honoured (mean/std 0.5): same pixels, different tensor than the default
    image = _images()[0]
    assert not np.allclose(enc.preprocess_image(image).numpy(), tiny.preprocess(image).numpy())
    import torch

    with torch.no_grad():
        ref = tiny.model.encode_image(enc.preprocess_image(image)[None]).numpy()
    np.testing.assert_allclose(enc.encode_images([image]), ref / np.linalg.norm(ref), atol=1e-5)

    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    _fake_hub_repo(empty_caches, "someone/tiny-clip", files)
    hub = create("openclip:hf-hub:someone/tiny-clip", cache=False)
    assert hub.id == "openclip:hf-hub:someone/tiny-clip"
    np.testing.assert_allclose(hub.encode_text(TEXTS), enc.encode_text(TEXTS), atol=1e-6)


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to reach the network or download weights fails the test."""
    import urllib.request

    import huggingface_hub
    import open_clip

    def forbidden(*args, **kwargs):
        raise AssertionError("a network access was attempted")

    for module, name in ((urllib.request, "urlopen"), (open_clip.pretrained, "download_pretrained"),
                         (open_clip.pretrained, "download_pretrained_from_hf"), (huggingface_hub, "hf_hub_download")):
        monkeypatch.setattr(module, name, forbidden)


def test_openclip_offline_missing_tag_fails_at_once_with_how_to(empty_caches, no_downloads, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local cache and downloads are off") as info:
        create("openclip:ViT-B-32/laion2b_s34b_b79k", cache=False)
    message = str(info.value)
    assert "\n" not in message
    assert "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/" in message
    assert "openclip:ViT-B-32//path/to/open_clip_pytorch_model.bin" in message
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and downloads are off"):
        create("openclip:hf-hub:nobody/nothing", cache=False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelLoadError, match="downloads are off"):  # the API's offline=True, env unset
        oc.load("ViT-B-32/laion2b_s34b_b79k", offline=True)
    assert time.monotonic() - start < 5


def test_openclip_cached_tag_resolves_without_network(empty_caches, no_downloads):
    """With the tag's file in the HF cache, the tag resolves to it (and its QuickGELU / preprocessing settings)."""
    import open_clip

    hub = open_clip.get_pretrained_cfg("RN50", "openai")["hf_hub"].rstrip("/")
    snap = _fake_hub_repo(empty_caches, hub, {"open_clip_model.safetensors": b"x"})
    for offline in (True, False):
        plan = oc.resolve("RN50/openai", offline=offline)
        assert plan.checkpoint == str(snap / "open_clip_model.safetensors")
        assert plan.quick_gelu and plan.id == "openclip:RN50/openai" and plan.preprocess["interpolation"] == "bicubic"


def test_openclip_online_downloads_missing_tag_with_open_clip(empty_caches, monkeypatch, tmp_path):
    """Online, a missing tag is fetched by open_clip's own downloader (stubbed here: tests never use the network);
    no network or a failed download is one line saying how to get the file."""
    import open_clip

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    weights = tmp_path / "downloaded.safetensors"
    weights.write_bytes(b"x")
    calls = []
    monkeypatch.setattr(oc, "_unreachable", lambda url, timeout=5.0: None)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, **kw: calls.append(cfg) or str(weights))
    plan = oc.resolve("ViT-B-32/laion2b_s34b_b79k")
    assert plan.checkpoint == str(weights) and plan.id == "openclip:ViT-B-32/laion2b_s34b_b79k"
    assert calls[0]["hf_hub"].startswith("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")

    def broken(cfg, **kw):
        raise OSError("connection reset\nby peer")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", broken)
    with pytest.raises(ModelLoadError, match="cannot download the weights .* connection reset by peer") as info:
        oc.resolve("ViT-B-32/laion2b_s34b_b79k")
    assert "\n" not in str(info.value) and "openclip:ViT-B-32//path/to/" in str(info.value)
    monkeypatch.setattr(oc, "_unreachable", lambda url, timeout=5.0: "Name or service not known")
    with pytest.raises(ModelLoadError, match="there is no network \\(Name or service not known\\)"):
        oc.resolve("ViT-B-32/laion2b_s34b_b79k")


def test_cli_offline_flag_fails_fast_on_missing_tag(tmp_path):
    """`xsearch --offline index ... --encoder openclip:<tag>` in a fresh process, HF_HUB_OFFLINE unset: exit 1, one line."""
    import os
    import subprocess
    import sys

    (tmp_path / "note.txt").write_text("hello")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path / "home"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")  # belt and braces: no network
    proc = subprocess.run([sys.executable, "-m", "xsearch.cli", "--offline", "index", str(tmp_path / "note.txt"),
                           "--home", str(tmp_path / "idx"), "--encoder", "openclip:ViT-B-32/laion2b_s34b_b79k", "-q"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "downloads are off" in lines[0] and "huggingface.co/laion" in lines[0], proc.stderr


@pytest.mark.parametrize("arg, message", [
    ("ViT-B-32//no/such/file.pt", "is not a file nor a pretrained tag of ViT-B-32"),
    ("NoSuchArch/weights.pt", "unknown open_clip architecture 'NoSuchArch'"),
    ("ViT-B-32", "expected <architecture>/<pretrained tag or checkpoint path>"),
    ("/no/such/config.json//no/such/w.pt", "open_clip model config not found"),
    ("/some/config.json", "a config JSON needs weights"),
])
def test_openclip_bad_names(arg, message):
    with pytest.raises(ModelLoadError, match=message):
        create("openclip:" + arg, cache=False)


def test_openclip_bad_checkpoint_content(tiny, tmp_path):
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for path in (wrong, garbage):
        with pytest.raises(ModelLoadError, match="cannot load open_clip model") as info:
            create(f"openclip:{tiny.config}/{path}", cache=False)
        assert "\n" not in str(info.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match="not an open_clip model folder"):
        create(f"openclip:{folder}", cache=False)
    (folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(ModelLoadError, match="no weights"):
        create(f"openclip:{folder}", cache=False)


# ---- st: ------------------------------------------------------------------------------------
def test_st_folder_round_trip(tiny_st):
    folder, model = tiny_st
    enc = create(f"st:{folder}", cache=False)
    assert enc.id == f"st:{folder.resolve()}" and enc.dim == TINY_ST_DIM and enc.modalities == {"text"}
    vectors = enc.encode_text(TEXTS)
    _unit_rows(vectors, 3, TINY_ST_DIM)
    ref = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(vectors, ref, atol=1e-5)  # the saved weights were really loaded
    again = enc.encode_text([TEXTS[1], TEXTS[1], "something else entirely"], batch_size=2)
    np.testing.assert_allclose(again[0], again[1], atol=1e-6)
    np.testing.assert_allclose(again[0], vectors[1], atol=1e-5)
    assert not np.allclose(again[0], again[2], atol=1e-3)
    assert enc.encode_text([]).shape == (0, TINY_ST_DIM)
    with pytest.raises(BadInput):
        enc.encode_images(_images())
    clone = pickle.loads(pickle.dumps(enc))
    np.testing.assert_allclose(clone.encode_text(TEXTS[:1]), vectors[:1], atol=1e-6)


def test_st_load_failures(tmp_path):
    with pytest.raises(ModelLoadError, match="folder not found"):
        create(f"st:{tmp_path / 'missing'}", cache=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load sentence-transformers model") as info:
        create(f"st:{tmp_path / 'empty'}", cache=False)
    assert "\n" not in str(info.value)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="no network"):
        create("st:nobody/no-such-model", cache=False)
    assert time.monotonic() - start < 5


def test_st_minilm_name_uses_packaged_copy():
    enc = create("st:all-MiniLM-L6-v2", cache=False)
    assert enc.dim == 384 and enc.id == "st:all-MiniLM-L6-v2"
    v = enc.encode_text(["a dog runs on the beach", "a puppy playing on the sand", "quarterly tax report"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # real pretrained weights, not random ones


# ---- registry -------------------------------------------------------------------------------
def test_unknown_prefix_lists_known_forms():
    for name in ("nope:thing", "openclip", "st:", "clip:ViT-B-32/openai"):
        with pytest.raises(UnknownEncoder) as info:
            create(name)
        message = str(info.value)
        assert "openclip:" in message and "st:" in message and "xsearch-mini" in message


def test_create_caches_by_name_and_id(tiny, tiny_st):
    clear_cache()
    first = create(tiny.name)
    assert create(tiny.name) is first and create(first.id) is first
    assert create(tiny.name, cache=False) is not first
    folder, _ = tiny_st
    st = create(f"st:{folder}")
    assert create(st.id) is st and st is not first
    clear_cache()
    assert create(tiny.name) is not first
