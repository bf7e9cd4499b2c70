"""xsearch-mini with its real packaged weights: output contract, retrieval/tagging floors, class-matrix cache."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.encoders import create
from xsearch.encoders import image_head, mini
from xsearch.encoders.mini import BridgeConfig, XsearchMini, class_matrix, imagenet_classes
from xsearch.errors import BadInput
from xsearch.evaluate import recall_at_k, top_k_accuracy
from xsearch.media import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV = DATA / "dev-photos"
INET = DATA / "imagenet-dev"
FLICKR = DATA / "flickr-dev"

# Measured (benchmarks/bench_quality.py): dev-photos R@1 0.65 / R@5 0.875, imagenet-dev tagging top-1 0.83 / top-5 0.92.
DEV_R1_FLOOR, DEV_R5_FLOOR = 0.5, 0.75
TAG_TOP1_FLOOR, TAG_TOP5_FLOOR = 0.7, 0.85


@pytest.fixture(scope="session")
def enc() -> XsearchMini:
    encoder = create("xsearch-mini")
    assert isinstance(encoder, XsearchMini)
    return encoder


@pytest.fixture(scope="session")
def dev_photos(enc) -> tuple[list[str], np.ndarray]:
    files = sorted(p.name for p in DEV.glob("*.jpg"))
    return files, enc.encode_images([DEV / f for f in files])


def _unit_rows(x: np.ndarray, n: int) -> None:
    assert x.dtype == np.float32 and x.shape == (n, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_identity(enc):
    assert enc.id == "xsearch-mini" and enc.dim == 384
    assert {"text", "image"} <= enc.modalities  # "audio" joins when an audio tower is attached
    assert create("xsearch-mini") is enc


@pytest.mark.needs_data
def test_outputs_are_unit_float32(enc, dev_photos):
    _unit_rows(enc.encode_text(["a cat", "a bowl of soup", ""]), 3)
    _unit_rows(dev_photos[1], 20)
    _unit_rows(enc.encode_text([]), 0)
    _unit_rows(enc.encode_image_batch(enc.preprocess_image(_grey()).unsqueeze(0).repeat(0, 1, 1, 1)), 0)


@pytest.mark.needs_data
def test_image_vectors_match_pil_and_path_inputs(enc):
    a = enc.encode_images([DEV / "coffee.jpg"])
    b = enc.encode_images([load_image(DEV / "coffee.jpg")])
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.needs_data
def test_image_features_share_one_backbone_pass(enc):
    batch = torch.stack([enc.preprocess_image(load_image(DEV / n)) for n in ("chelsea.jpg", "rocket.jpg")])
    emb, pooled = enc.encode_image_features(batch)
    assert pooled.shape == (2, 1280) and pooled.dtype == np.float32
    np.testing.assert_allclose(emb, enc.encode_image_batch(batch), atol=1e-6)
    probs = enc.class_probabilities(batch).cpu()
    assert probs.shape == (2, 1000) and torch.allclose(probs.sum(dim=1), torch.ones(2))
    assert set(probs[0].topk(5).indices.tolist()) & set(range(281, 286))  # ImageNet's domestic cats


def test_preprocess_is_cheap_and_picklable(enc):
    t = enc.preprocess_image(_grey(size=(640, 300)))
    assert tuple(t.shape) == (3, 224, 224) and t.device.type == "cpu"
    clone = pickle.loads(pickle.dumps(enc.preprocess_image))
    assert (clone(_grey(size=(640, 300))) == t).all()
    assert len(pickle.dumps(enc)) < 10_000  # models are not pickled; they reload lazily


@pytest.mark.needs_data
def test_cat_photo_ranks_first_for_a_cat(enc, dev_photos):
    files, vecs = dev_photos
    scores = enc.encode_text(["a cat"]) @ vecs.T
    assert files[int(scores.argmax())] == "chelsea.jpg"


@pytest.mark.needs_data
def test_dev_photos_retrieval_floor(enc, dev_photos):
    files, vecs = dev_photos
    with open(DEV / "queries.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    sim = enc.encode_text([r["query"] for r in rows]) @ vecs.T
    r = recall_at_k(sim, np.array([files.index(r["file"]) for r in rows]), (1, 5))
    assert r[1] >= DEV_R1_FLOOR and r[5] >= DEV_R5_FLOOR, r


@pytest.mark.slow  # ~8 s on an idle 2-core machine (100 photos + 1000 prompts), much more when the CPU is shared
@pytest.mark.needs_data
def test_imagenet_zero_shot_tagging_floor(enc):
    with open(INET / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    wnids = [c.wnid for c in imagenet_classes()]
    labels = enc.encode_text([f"a photo of a {name}." for name in XsearchMini.imagenet_labels()])
    scores = enc.encode_images([INET / r["file"] for r in rows]) @ labels.T
    acc = top_k_accuracy(scores, [wnids.index(r["wnid"]) for r in rows], (1, 5))
    assert acc[1] >= TAG_TOP1_FLOOR and acc[5] >= TAG_TOP5_FLOOR, acc


def test_image_head_ships_small_and_is_used(enc):
    weights, config = image_head.files()
    assert weights.stat().st_size < 8_000_000 and config.is_file()
    assert isinstance(enc._image_head(), image_head.ImageHead)
    assert XsearchMini(config=BridgeConfig(head=False))._image_head() is None
    batch = torch.stack([enc.preprocess_image(_grey()), enc.preprocess_image(_grey((80, 200)))])
    head_vecs, conse_vecs = enc.encode_image_batch(batch), XsearchMini(config=BridgeConfig(head=False)).encode_image_batch(batch)
    _unit_rows(head_vecs, 2)
    _unit_rows(conse_vecs, 2)
    assert np.abs(head_vecs - conse_vecs).max() > 1e-3  # the head changes the vectors


def _random_head(seed: int, attn_heads: int = 0, pooled_input: bool = True) -> image_head.ImageHead:
    torch.manual_seed(seed)
    head = image_head.ImageHead(in_dim=12, hidden=6, out_dim=4, attn_heads=attn_heads, pooled_input=pooled_input)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    return head.eval()


def test_merged_head_gives_the_mean_of_the_heads_residuals():
    heads = [_random_head(0), _random_head(1)]
    merged = image_head.merge(heads)
    x = torch.randn(5, 12)
    assert merged.spec["hidden"] == 12
    torch.testing.assert_close(merged.residual(x), (heads[0].residual(x) + heads[1].residual(x)) / 2)


@pytest.mark.parametrize("pooled_input", [True, False])
def test_merged_attention_heads_give_the_mean_of_the_heads_residuals(tmp_path, pooled_input):
    heads = [_random_head(0, attn_heads=2, pooled_input=pooled_input), _random_head(1, 1, pooled_input)]
    merged = image_head.merge(heads)
    x, fmap = torch.randn(5, 12), torch.randn(5, 9, 12)
    assert merged.attn_heads == 3 and merged.pooled_input == pooled_input
    torch.testing.assert_close(merged.residual(x, fmap), (heads[0].residual(x, fmap) + heads[1].residual(x, fmap)) / 2)
    image_head.save(merged, tmp_path, {})
    loaded, c = image_head.load(tmp_path), torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    assert loaded.attn_heads == 3 and loaded.pooled_input == pooled_input  # the config says what the head reads
    torch.testing.assert_close(loaded(x, c, fmap), merged(x, c, fmap), atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="fmap"):
        loaded(x, c)


def test_an_attention_head_gets_the_feature_map_of_the_same_backbone_pass(enc):
    other = XsearchMini()
    torch.manual_seed(0)
    head = image_head.ImageHead(hidden=8, attn_heads=2).eval()
    with torch.no_grad():
        for p in (head.pool.query.weight, head.fc2.weight):
            p.normal_()
    other._head = head
    batch = torch.stack([enc.preprocess_image(_grey()), enc.preprocess_image(_grey((80, 200)))])
    logits, pooled, fmap = other._backbone(batch, keep_map=True)
    assert fmap.shape == (2, 49, 1280)
    torch.testing.assert_close(fmap.mean(dim=1), pooled)
    classes, mean = other._classes()
    c = torch.nn.functional.normalize(mini.conse(logits, classes, mean, other.config), dim=-1)
    with torch.inference_mode():
        expect = head(pooled, c, fmap).numpy()
    np.testing.assert_allclose(other.encode_image_batch(batch), expect, atol=1e-5)


def test_attention_pool_starts_as_the_global_mean():
    fmap = torch.randn(3, 49, 12)
    torch.testing.assert_close(image_head.AttnPool(12, 2)(fmap), fmap.mean(dim=1, keepdim=True).expand(3, 2, 12))


def test_scale_and_centre_are_saved_and_older_heads_load_without_them(tmp_path):
    from safetensors.torch import load_file, save_file

    head = _random_head(0)
    head.calibrate(0.5, torch.tensor([1.0, 0.0, -1.0, 0.5]))
    weights, _ = image_head.save(head, tmp_path, {})
    x, c = torch.randn(3, 12), torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    loaded = image_head.load(tmp_path)
    torch.testing.assert_close(loaded(x, c), head(x, c), atol=2e-2, rtol=0)  # float16 weights on disk
    old = {k: v for k, v in load_file(str(weights)).items() if k not in ("scale", "centre")}
    save_file(old, str(weights))
    before = image_head.load(tmp_path)
    assert before.scale.item() == 1.0 and not before.centre.any()
    expect = torch.nn.functional.normalize(before.prior * c + before.residual(x), dim=-1)
    torch.testing.assert_close(before(x, c), expect)


def test_fingerprint_names_the_shipped_weights(enc, tmp_path, monkeypatch):
    fp = enc.fingerprint
    assert fp.startswith("v2-") and len(fp) == 13 and fp == XsearchMini().fingerprint
    assert XsearchMini(config=BridgeConfig(head=False)).fingerprint.startswith("conse-")
    for path in mini.WEIGHTS_DIR.glob("*.safetensors"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(mini, "WEIGHTS_DIR", tmp_path)
    assert XsearchMini().fingerprint == fp  # same bytes, same fingerprint
    (tmp_path / "audio_tower.safetensors").write_bytes(b"other weights")
    assert XsearchMini().fingerprint not in (fp, enc.fingerprint.replace("v2-", "conse-"))


@pytest.mark.needs_data
def test_trained_head_beats_conse_on_flickr_captions(enc):
    with open(FLICKR / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    files = list(dict.fromkeys(r["file"] for r in rows))[:40]
    rows = [r for r in rows if r["file"] in files]
    gt = np.array([files.index(r["file"]) for r in rows])
    text = enc.encode_text([r["caption"] for r in rows])
    conse = XsearchMini(config=BridgeConfig(head=False))
    r_head = recall_at_k(text @ enc.encode_images([FLICKR / f for f in files]).T, gt, (1,))[1]
    r_conse = recall_at_k(text @ conse.encode_images([FLICKR / f for f in files]).T, gt, (1,))[1]
    assert r_head >= r_conse + 0.15 and r_head >= 0.5, (r_head, r_conse)


def test_imagenet_labels():
    labels = XsearchMini.imagenet_labels()
    assert len(labels) == 1000 and labels[281] == "tabby cat" and all(isinstance(s, str) and s for s in labels)
    assert all(c.gloss and c.synonyms for c in imagenet_classes())


def test_unreadable_image_is_bad_input(enc, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (broken, empty, tmp_path / "missing.jpg"):
        with pytest.raises(BadInput):
            enc.encode_images([path])
    with pytest.raises(BadInput):
        enc.encode_text("a single string")
    if "audio" not in enc.modalities:
        with pytest.raises(BadInput):
            enc.encode_audio([(np.zeros(16000, np.float32), 16000)])


def test_class_matrix_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []

    def fake_encode(texts, batch_size=64):
        calls.append(len(texts))
        rng = np.random.default_rng(len(texts))
        x = rng.standard_normal((len(texts), 384)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    config = BridgeConfig(templates=("a photo of a {}.", "a {}."))
    first = class_matrix(config, fake_encode)
    assert first.shape == (1000, 384) and first.dtype == np.float32 and len(calls) == 2
    cached = list((tmp_path / "cache").glob("mini-classes-*.npy"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*.tmp"))
    np.testing.assert_array_equal(class_matrix(config, fake_encode), first)
    assert len(calls) == 2  # second start: read from disk, nothing embedded
    class_matrix(BridgeConfig(templates=("a {}.",)), fake_encode)  # other prompts -> other key
    assert len(list((tmp_path / "cache").glob("mini-classes-*.npy"))) == 2
    cached[0].write_bytes(b"garbage")
    np.testing.assert_array_equal(class_matrix(config, fake_encode), first)  # corrupt cache is rebuilt
    assert len(calls) == 6


def _grey(size=(300, 200)):
    from PIL import Image

    return Image.new("RGB", size, (128, 128, 128))
