"""Contrastive trainer: loss values, heads, manifests, a training run that must learn, save/load, CLI."""
from __future__ import annotations

import copy
import json
import math
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import DEV_PHOTOS
from xsearch.encoders import registry
from xsearch.encoders.base import Encoder, l2_normalize
from xsearch.errors import BadInput, ModelLoadError
from xsearch.cli import app as cli_app
from xsearch.train.data import read_pairs, split_by_item, split_pairs, unique_batches
from xsearch.encoders.heads import LinearHead, ResidualMLP, build_head, default_head_spec
from xsearch.train.loop import FitConfig, TrainConfig, Tower, fit, train
from xsearch.train.loss import ClipLoss, symmetric_infonce

PALETTE = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "black": (10, 10, 10), "white": (245, 245, 245)}


# ---- a tiny real base encoder, registered as "toy-base" ------------------------------------------
class ToyEncoder(Encoder):
    """Hashed bag of words / 4x4 thumbnails through fixed random projections into 16-d (deliberately unaligned)."""

    id = "toy-base"
    dim = 16
    modalities = frozenset({"text", "image"})

    def __init__(self):
        rng = np.random.default_rng(123)
        self.w_text = rng.normal(size=(64, self.dim)).astype(np.float32)
        self.w_image = rng.normal(size=(48, self.dim)).astype(np.float32)

    def encode_text(self, texts, batch_size=64):
        bags = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                bags[i, zlib.crc32(w.encode()) % 64] += 1
        return l2_normalize(bags @ self.w_text)

    def preprocess_image(self, image):
        arr = np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def encode_image_batch(self, batch):
        return l2_normalize(batch.flatten(1).numpy() @ self.w_image)


@pytest.fixture(scope="module", autouse=True)
def toy_backend():
    module = types.ModuleType("xsearch_toy_base")
    module.load = lambda arg: ToyEncoder()
    sys.modules[module.__name__] = module
    registry.register(registry.Backend("toy-base", "xsearch_toy_base:load", "test toy", "toy-base", exact=True))
    yield
    registry._BACKENDS.pop("toy-base", None)
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory) -> Path:
    """30 two-colour images (left/right halves) with two captions each, as a CSV with relative paths."""
    root = tmp_path_factory.mktemp("toy")
    (root / "img").mkdir()
    rows = ["path,caption"]
    for left in PALETTE:
        for right in PALETTE:
            if left == right:
                continue
            im = Image.new("RGB", (32, 32), PALETTE[left])
            im.paste(PALETTE[right], (16, 0, 32, 32))
            im.save(root / "img" / f"{left}-{right}.png")
            rows += [f"img/{left}-{right}.png,{left} left {right} right",
                     f'img/{left}-{right}.png,"{right} on the right, {left} on the left"']
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


# ---- loss ------------------------------------------------------------------------------------
def test_zero_logits_give_log_n():
    for n in (2, 5, 17):
        assert symmetric_infonce(torch.zeros(n, n)).item() == pytest.approx(math.log(n), rel=1e-6)


def test_perfect_alignment_with_large_scale_is_near_zero():
    x = torch.nn.functional.normalize(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = ClipLoss(init_temperature=0.01, max_scale=100.0)
    assert loss(x, x).item() < 1e-3
    shuffled = loss(x, x[torch.randperm(8, generator=torch.Generator().manual_seed(1))]).item()
    assert shuffled > 1.0


def test_loss_is_symmetric_and_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(6, 10, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 10, generator=g), dim=-1)
    loss = ClipLoss(init_temperature=0.1)
    assert loss(a, b).item() == pytest.approx(loss(b, a).item(), rel=1e-6)
    logits = 10.0 * a @ b.T
    rows = -torch.log_softmax(logits, 1).diag().mean()
    cols = -torch.log_softmax(logits, 0).diag().mean()
    assert loss(a, b).item() == pytest.approx(0.5 * (rows + cols).item(), rel=1e-5)


def test_hard_negative_weight_counts_hardest_negative_more():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 2.0, 1.5], [0.0, 0.2, 1.0]])
    plain = symmetric_infonce(logits).item()
    weighted = symmetric_infonce(logits, hard_negative_weight=1.0).item()
    # row 0's hardest negative (col 1, logit 1.0) counted twice: -log(e^2 / (e^2 + 2e^1 + e^0))
    row0 = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(1) + 1))
    assert weighted > plain
    bumped = logits.clone()
    bumped[0, 1] += math.log(2)
    bumped[1, 2] += math.log(2)
    bumped[2, 1] += math.log(2)
    assert weighted == pytest.approx(symmetric_infonce(bumped).item(), rel=1e-6)
    assert -torch.log_softmax(bumped, 1)[0, 0].item() == pytest.approx(row0, rel=1e-6)


def test_temperature_is_learnable_and_clamped():
    loss = ClipLoss(init_temperature=0.07)
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss(x, x.roll(1, 0)).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.item() != 0
    assert ClipLoss(init_temperature=1e-4).scale().item() == pytest.approx(100.0)
    assert not ClipLoss(learnable=False).logit_scale.requires_grad


# ---- heads -----------------------------------------------------------------------------------
def test_heads_start_from_the_base_space():
    x = torch.randn(5, 12)
    torch.testing.assert_close(ResidualMLP(12, 12).eval()(x), x)
    torch.testing.assert_close(ResidualMLP(20, 12, skip="slice").eval()(torch.cat([x, torch.randn(5, 8)], 1)), x)
    torch.testing.assert_close(LinearHead(12, 12)(x), x)
    assert ResidualMLP(20, 12, skip="linear")(torch.randn(5, 20)).shape == (5, 12)
    assert default_head_spec(12, 12)["skip"] == "identity" and default_head_spec(20, 12)["skip"] == "linear"
    with pytest.raises(ValueError):
        ResidualMLP(12, 20, skip="slice")
    with pytest.raises(ValueError):
        build_head({"type": "nope"})


# ---- data ------------------------------------------------------------------------------------
def test_csv_manifest_resolves_relative_paths_and_dedups_items(toy_manifest):
    data = read_pairs(toy_manifest)
    assert len(data.a) == 30 and len(data.b) == 60 and len(data) == 60
    assert data.modality_a == "image" and data.modality_b == "text"
    assert all(Path(it.path).is_absolute() and Path(it.path).is_file() for it in data.a)
    assert sorted(np.bincount(data.pairs[:, 0], minlength=len(data.a))) == [2] * 30  # two captions per image


def test_jsonl_path_a_path_b_and_folder_forms(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a black square\nsomething dark")
    (tmp_path / "note.txt").write_text("a note")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path_a": "a.png", "path_b": "note.txt"}) + "\n\n")
    data = read_pairs(tmp_path / "m.jsonl")
    assert (data.modality_a, data.modality_b, len(data)) == ("image", "text", 1)
    assert data.b[0].load_text() == "a note"
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.png", "caption": "two\nlines"}]))
    assert read_pairs(tmp_path / "m.json").b[0].text == "two\nlines"
    (tmp_path / "q.csv").write_text('path,caption\na.png,"a caption, with a comma\nand a newline"\n')
    assert read_pairs(tmp_path / "q.csv").b[0].text == "a caption, with a comma\nand a newline"
    folder = read_pairs(tmp_path)  # no captions.csv: image + same-named .txt (one caption per line)
    assert [it.text for it in folder.b] == ["a black square", "something dark"]
    (tmp_path / "captions.csv").write_text("file,caption\na.png,dark\n")
    assert [it.text for it in read_pairs(tmp_path).b] == ["dark"]


@pytest.mark.parametrize("content, message", [
    ("path,caption\nmissing.png,a cat\n", "pairs.csv:2: .*missing.png: no such file"),
    ("image_path,words\nx.png,a cat\n", "pairs.csv:2: expected columns"),
    ("path,caption\nok.png,\n", "pairs.csv:2: empty caption"),
    ("path,caption\nok.png,a,b\n", "pairs.csv:2: more fields"),
    ("path_a,path_b\nok.png,ok.png\nok.png,t.txt\n", "pairs.csv:3: b-side item is text"),
    ("", "empty manifest"),
])
def test_manifest_errors_name_file_and_line(tmp_path, content, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "t.txt").write_text("words")
    (tmp_path / "pairs.csv").write_text(content)
    with pytest.raises(BadInput, match=message):
        read_pairs(tmp_path / "pairs.csv")


def test_bad_jsonl_and_missing_sources(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "x.png", "caption": "a"}\n{oops\n')
    with pytest.raises(BadInput, match="m.jsonl:1: .*no such file"):
        read_pairs(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text('{oops\n')
    with pytest.raises(BadInput, match="m.jsonl:1: not valid JSON"):
        read_pairs(tmp_path / "m.jsonl")
    with pytest.raises(BadInput, match="no such manifest"):
        read_pairs(tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="no captions.csv"):
        read_pairs(tmp_path)


def test_split_is_by_item_and_deterministic(toy_manifest):
    data = read_pairs(toy_manifest)
    tr, va = split_pairs(data, 0.2, seed=7)
    assert len(tr) + len(va) == len(data) and len(va) == 12  # 6 images x 2 captions
    assert not set(data.pairs[tr, 0]) & set(data.pairs[va, 0])
    assert np.array_equal(va, split_pairs(data, 0.2, seed=7)[1])
    assert not np.array_equal(va, split_pairs(data, 0.2, seed=8)[1])
    train_set, val_set = split_by_item(data, 0.2, seed=7)
    assert len(val_set.a) == 6 and len(train_set.a) == 24 and split_by_item(data, 0.0)[1] is None
    with pytest.raises(BadInput, match="val-fraction"):
        split_pairs(data, 1.0)


def test_batches_never_repeat_an_item():
    pairs = np.array([[i // 5, i] for i in range(50)])  # 10 images, 5 captions each
    batches = unique_batches(pairs, 8, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    for b in batches:
        assert len(set(pairs[b, 0])) == len(b) <= 8


# ---- training ---------------------------------------------------------------------------------
def _two_views(n: int, seed: int = 0):
    """Two random linear views (plus noise) of the same 8-d latent: aligned data the heads must discover."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 8))
    a = z @ rng.normal(size=(8, 32)) + 0.1 * rng.normal(size=(n, 32))
    b = z @ rng.normal(size=(8, 24)) + 0.1 * rng.normal(size=(n, 24))
    return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def test_short_training_run_raises_val_recall_well_above_chance():
    fa, fb = _two_views(240)
    torch.manual_seed(0)
    ta = Tower("image", fa, build_head(default_head_spec(32, 16, hidden=64)))
    tb = Tower("text", fb, build_head(default_head_spec(24, 16, hidden=64)))
    pairs = np.stack([np.arange(240), np.arange(240)], 1)
    res = fit(ta, tb, pairs[:200], pairs[200:], FitConfig(epochs=30, batch_size=50, lr=3e-3, patience=0, seed=0))
    before, after = res.before["text_to_image"], res.after["text_to_image"]
    assert after["R@1"] >= 0.5 and after["R@5"] >= 0.9 > before["R@5"] + 0.3  # chance R@1 = 1/40
    assert res.after["image_to_text"]["R@1"] >= 0.5
    assert after["mean_rank"] < before["mean_rank"] / 3
    assert res.best_epoch > 0 and res.split == "validation"
    again = fit(Tower("image", fa, _seeded_head(32)), Tower("text", fb, _seeded_head(24)), pairs[:200], pairs[200:],
                FitConfig(epochs=3, batch_size=50, seed=0))
    repeat = fit(Tower("image", fa, _seeded_head(32)), Tower("text", fb, _seeded_head(24)), pairs[:200], pairs[200:],
                 FitConfig(epochs=3, batch_size=50, seed=0))
    assert again.after == repeat.after  # deterministic given the seed


def _seeded_head(in_dim: int):
    torch.manual_seed(in_dim)
    return build_head(default_head_spec(in_dim, 16, hidden=32))


def test_early_stopping_keeps_the_best_epoch():
    fa, fb = _two_views(120, seed=1)
    rand_b = torch.randn_like(fb)  # validation captions unrelated to training: nothing transfers
    feats_b = torch.cat([fb[:100], rand_b[100:]])
    torch.manual_seed(0)
    ta = Tower("image", fa, build_head(default_head_spec(32, 16, hidden=32)))
    tb = Tower("text", feats_b, build_head(default_head_spec(24, 16, hidden=32)))
    pairs = np.stack([np.arange(120), np.arange(120)], 1)
    res = fit(ta, tb, pairs[:100], pairs[100:], FitConfig(epochs=40, batch_size=25, patience=2, seed=0))
    assert res.epochs_run < 40
    best = max(h["val_mean_recall"] for h in res.history)
    assert res.after["mean_recall"] == pytest.approx(best)


def test_train_pipeline_saves_an_encoder_that_reloads_identically(toy_manifest, tmp_path):
    out = tmp_path / "enc"
    cfg = TrainConfig(str(toy_manifest), str(out), base="toy-base", epochs=15, batch_size=16, lr=3e-3,
                      val_fraction=0.2, hidden=64, patience=0, train_sides="both", quiet=True)
    res = train(cfg)
    assert res.encoder == f"align:{out.resolve()}" and (out / "heads.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["base"] == "toy-base" and config["dim"] == 16 and set(config["heads"]) == {"image", "text"}
    assert config["metrics"]["after"]["text_to_image"]["R@1"] == res.fit.after["text_to_image"]["R@1"]
    assert res.fit.after["mean_recall"] > res.fit.before["mean_recall"]
    assert res.counts["val_items"] == 6 and res.counts["train_pairs"] == 48

    enc = registry.create(res.encoder, cache=False)
    again = registry.create(f"align:{out}", cache=False)
    assert enc.id == res.encoder and enc.dim == 16 and enc.modalities == {"image", "text"}
    assert enc.fingerprint == again.fingerprint == ""  # the toy base is unversioned
    enc.base = copy.copy(enc.base)
    enc.base.fingerprint = "v9-base"  # new base weights: collections built with the old ones must re-embed
    assert enc.fingerprint == "v9-base"
    texts = ["red left blue right", "white on the right, black on the left"]
    images = sorted(str(p) for p in (toy_manifest.parent / "img").glob("*.png"))[:5]
    pairs = ((enc.encode_text(texts), again.encode_text(texts)), (enc.encode_images(images), again.encode_images(images)))
    for a, b in pairs:
        assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
        np.testing.assert_array_equal(a, b)
    # the loaded heads are the trained ones: embeddings differ from the base's and match the heads' own output
    base = ToyEncoder()
    assert not np.allclose(enc.encode_text(texts), base.encode_text(texts), atol=1e-3)


def test_default_keeps_the_text_side_frozen(toy_manifest, tmp_path):
    res = train(TrainConfig(str(toy_manifest), str(tmp_path / "enc"), base="toy-base", epochs=2, quiet=True,
                            cache_dir=str(tmp_path / "cache")))
    enc = registry.create(res.encoder, cache=False)
    assert set(enc.config["heads"]) == {"image"} and enc.modalities == {"image", "text"}
    texts = ["red left blue right"]
    np.testing.assert_array_equal(enc.encode_text(texts), ToyEncoder().encode_text(texts))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = train(TrainConfig(str(toy_manifest), str(tmp_path / "enc2"), base="toy-base", epochs=2, quiet=True,
                              cache_dir=str(tmp_path / "cache")))
    assert again.fit.after == res.fit.after  # same seed, features from the cache: same result


def test_loading_bad_folders_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="missing config.json"):
        registry.create(f"align:{tmp_path}", cache=False)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ModelLoadError, match="not an xsearch trained-encoder"):
        registry.create(f"align:{tmp_path}", cache=False)


def test_cli_train_json_and_errors(toy_manifest, tmp_path, monkeypatch):
    app = cli_app
    runner = CliRunner()
    out = tmp_path / "cli-enc"
    res = runner.invoke(app, ["train", str(toy_manifest), "--base", "toy-base", "--out", str(out), "--epochs", "3",
                              "--batch-size", "16", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["encoder"] == f"align:{out.resolve()}"
    assert {"R@1", "R@5", "R@10", "mean_rank"} <= set(payload["after"]["image_to_text"])
    table = runner.invoke(app, ["train", str(toy_manifest), "--base", "toy-base", "--out", str(out), "--epochs", "2", "-q"])
    assert table.exit_code == 0 and "text -> image" in table.stdout and "--encoder align:" in table.stdout
    bad = runner.invoke(app, ["train", str(tmp_path / "nope.csv"), "--base", "toy-base", "--out", str(out)])
    assert bad.exit_code == 1 and "error:" in bad.output and "nope.csv" in bad.output
    # the same funnel as every command: an unexpected error is exit 2, one line; Ctrl-C is 130
    import xsearch.engine as engine

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(engine, "train_encoder", boom)
    crash = runner.invoke(app, ["train", str(toy_manifest), "--base", "toy-base", "--out", str(out)])
    assert crash.exit_code == 2 and crash.stderr.strip().splitlines() == [
        "internal error: RuntimeError: out of memory (XSEARCH_DEBUG=1 shows the traceback; please report it)"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_encoder", interrupted)
    assert runner.invoke(app, ["train", str(toy_manifest), "--base", "toy-base", "--out", str(out)]).exit_code == 130


# ---- the real offline encoder -------------------------------------------------------------------
@pytest.mark.needs_data
def test_real_xsearch_mini_end_to_end(tmp_path, mini):
    pytest.importorskip("xsearch.encoders.mini")
    rows = ["file,query"] + (DEV_PHOTOS / "queries.csv").read_text().splitlines()[1:13]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("\n".join(f"{DEV_PHOTOS}/{r}" if i else "path,caption" for i, r in enumerate(rows)) + "\n")
    res = train(TrainConfig(str(manifest), str(tmp_path / "enc"), epochs=2, batch_size=8, val_fraction=0.3, quiet=True))
    enc = registry.create(res.encoder, cache=False)
    assert enc.dim == 384 and {"image", "text"} <= enc.modalities
    vec = enc.encode_images([DEV_PHOTOS / "chelsea.jpg"])
    assert vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert res.fit.after["mean_recall"] >= res.fit.before["mean_recall"]


@pytest.mark.needs_data
def test_trained_encoder_indexes_and_answers_through_the_cli(tmp_path, photos, home):
    from xsearch.cli import app as main_app

    manifest = tmp_path / "pairs.csv"
    rows = (DEV_PHOTOS / "queries.csv").read_text().splitlines()[1:]
    manifest.write_text("path,caption\n" + "\n".join(f"{DEV_PHOTOS}/{r}" for r in rows) + "\n")
    cli = CliRunner()
    trained = cli.invoke(main_app, ["train", str(manifest), "--out", str(tmp_path / "enc"), "--epochs", "3", "--json"])
    assert trained.exit_code == 0, trained.output
    name = json.loads(trained.stdout)["encoder"]
    assert name == f"align:{tmp_path / 'enc'}"
    indexed = cli.invoke(main_app, ["index", str(photos), "--encoder", name, "--home", str(home), "-q"])
    assert indexed.exit_code == 0, indexed.output
    hits = cli.invoke(main_app, ["query", "a cat", "--home", str(home), "--json", "-k", "1"])
    assert hits.exit_code == 0 and Path(json.loads(hits.stdout)["path"]).name == "chelsea.jpg"
    info = json.loads(cli.invoke(main_app, ["info", "--home", str(home), "--json"]).stdout)
    assert info["encoder"] == name


def test_cli_defaults_match_the_library_defaults():
    import inspect

    from xsearch.cli import train_command

    defaults = TrainConfig("m", "o")
    params = inspect.signature(train_command).parameters
    for name in ("base", "epochs", "batch_size", "lr", "val_fraction", "seed", "hard_negatives", "patience",
                 "image_features", "hidden"):
        assert params[name].default.default == getattr(defaults, name), name


def test_feature_cache_notices_a_changed_base_model(toy_manifest, tmp_path):
    from xsearch.train.loop import _cached_features

    data = read_pairs(toy_manifest)
    texts = [it.text for it in data.b]
    noop = lambda *a: None  # noqa: E731
    first = _cached_features(ToyEncoder(), "text", "embed", data.b, texts, str(tmp_path), noop)
    np.testing.assert_array_equal(first, ToyEncoder().encode_text(texts))
    changed = ToyEncoder()
    changed.w_text = changed.w_text[::-1].copy()  # same id, different weights
    second = _cached_features(changed, "text", "embed", data.b, texts, str(tmp_path), noop)
    np.testing.assert_array_equal(second, changed.encode_text(texts))
    assert len(list(tmp_path.glob("text-*.npz"))) == 2
