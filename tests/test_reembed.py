"""Versioned encoders: a collection built with another version of its encoder is refused with a one-line message, and
`reindex --reembed` upgrades it in place (ids, metadata, tags kept; never two versions in one index; resumable)."""
from __future__ import annotations

import json
import sqlite3
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from xsearch import Collection, EncoderMismatch
from xsearch.cli import app
from xsearch.config import INFO_FILE, META_FILE
from xsearch.encoders import registry
from xsearch.encoders.base import Encoder, l2_normalize

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "black": (10, 10, 10), "white": (245, 245, 245)}


class Versioned(Encoder):
    """A tiny real encoder whose weights depend on ``version`` (as a new xsearch release would ship new weights)."""

    id = "toy-versioned"
    dim = 12
    modalities = frozenset({"text", "image"})
    version = 1

    @property
    def fingerprint(self) -> str:  # type: ignore[override]
        return f"v{self.version}-toy"

    def _weights(self, rows: int, salt: int) -> np.ndarray:
        return np.random.default_rng(1000 * self.version + salt).normal(size=(rows, self.dim)).astype(np.float32)

    def encode_text(self, texts, batch_size=64):
        bags = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                bags[i, zlib.crc32(w.encode()) % 32] += 1
        return l2_normalize(bags @ self._weights(32, 1))

    def preprocess_image(self, image):
        arr = np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).flatten()

    def encode_image_batch(self, batch):
        return l2_normalize(batch.numpy() @ self._weights(12, 2))


ENCODER = Versioned()


@pytest.fixture(autouse=True)
def versioned_backend(monkeypatch):
    module = types.ModuleType("xsearch_toy_versioned")
    module.load = lambda arg: ENCODER
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry.register(registry.Backend("toy-versioned", "xsearch_toy_versioned:load", "test", "toy-versioned",
                                       exact=True))
    monkeypatch.setattr(Versioned, "version", 1)
    yield
    registry._BACKENDS.pop("toy-versioned", None)
    registry._CACHE.pop("toy-versioned", None)


@pytest.fixture
def built(tmp_path):
    """A collection of 6 two-colour images, a text note, captions and tags, built with version 1."""
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, (name, rgb) in enumerate(COLOURS.items()):
        other = list(COLOURS.values())[(i + 1) % len(COLOURS)]
        img = Image.new("RGB", (32, 32), rgb)
        img.paste(Image.new("RGB", (16, 32), other), (16, 0))
        img.save(folder / f"{name}.png")
    (folder / "note.txt").write_text("a note about red things")
    caps = tmp_path / "caps.csv"
    caps.write_text("file,caption\npics/red.png,a red square\npics/blue.png,a blue square\n")
    home = tmp_path / "home"
    col = Collection.open(home, "c", encoder="toy-versioned", create=True)
    col.add([folder], captions=caps)
    col.tag(["warm", "cold"], k=1)
    col.close()
    return home, folder


def stored(home: Path) -> dict[str, tuple[int, np.ndarray]]:
    con = sqlite3.connect(home / "c" / META_FILE)
    rows = con.execute("select key, id, vector from items").fetchall()
    con.close()
    return {key: (i, np.frombuffer(v, np.float32)) for key, i, v in rows}


def expected_vectors(items: dict[str, tuple[int, np.ndarray]], home: Path) -> dict[str, np.ndarray]:
    """What the current version gives for each stored item: files from disk, captions from their text."""
    con = sqlite3.connect(home / "c" / META_FILE)
    texts = dict(con.execute("select key, text from items where parent_id is not null").fetchall())
    con.close()
    out = {}
    for key in items:
        if key in texts:
            out[key] = ENCODER.encode_text([texts[key]])[0]
        elif key.endswith(".txt"):
            out[key] = ENCODER.encode_text([Path(key).read_text()])[0]
        else:
            out[key] = ENCODER.encode_images([key])[0]
    return out


def test_new_version_is_refused_with_one_line_and_reembed_upgrades_in_place(built):
    home, folder = built
    before = stored(home)
    tags_before = sqlite3.connect(home / "c" / META_FILE).execute("select item_id, tag from tags").fetchall()
    Versioned.version = 2
    col = Collection.open(home, "c")
    for use in (lambda: col.search(text="red"), lambda: col.add([folder]), lambda: col.tag(["x"])):
        with pytest.raises(EncoderMismatch) as err:
            use()
        assert str(err.value) == ("collection 'c' was built with toy-versioned v1-toy; this xsearch has toy-versioned "
                                  "v2-toy: run `xsearch reindex --reembed -c c`")
    report = col.reembed()
    assert (report.reembedded, report.resumed, report.dropped, report.removed) == (9, 0, [], 0)
    assert (report.old_fingerprint, report.new_fingerprint) == ("v1-toy", "v2-toy")
    after = stored(home)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # same items, same ids
    want = expected_vectors(after, home)
    for key, (_, vec) in after.items():
        np.testing.assert_allclose(vec, want[key], atol=1e-6)
        assert not np.allclose(vec, before[key][1], atol=1e-3)
    assert sqlite3.connect(home / "c" / META_FILE).execute("select item_id, tag from tags").fetchall() == tags_before
    hits = col.search(image=folder / "green.png", k=1)
    assert Path(hits[0].path).name == "green.png" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    col.close()
    assert json.loads((home / "c" / INFO_FILE).read_text())["encoder_fingerprint"] == "v2-toy"
    assert len(Collection.open(home, "c").search(text="a red square", k=3, modality="text")) == 3


def test_cli_query_says_reembed_and_reindex_reembed_fixes_it(built):
    home, folder = built
    (folder / "yellow.png").unlink()  # a file that vanished: reported, dropped with nothing else
    (folder / "red.png").unlink()  # ... and one with a caption: the caption goes with it
    Versioned.version = 2
    runner = CliRunner()
    refused = runner.invoke(app, ["query", "red", "--home", str(home), "-c", "c"])
    assert refused.exit_code == 1 and refused.stderr.strip().splitlines() == [
        "error: collection 'c' was built with toy-versioned v1-toy; this xsearch has toy-versioned v2-toy: run "
        "`xsearch reindex --reembed -c c`"]
    done = runner.invoke(app, ["reindex", "--reembed", "--home", str(home), "-c", "c", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)["reembed"]
    assert sorted(Path(d["path"]).name for d in result["dropped"]) == ["red.png", "yellow.png"]
    assert all("file is gone" in d["reason"] for d in result["dropped"]) and result["removed"] == 3
    hits = runner.invoke(app, ["query", "--image", str(folder / "blue.png"), "--home", str(home), "-c", "c", "--json",
                               "-k", "20"])
    assert hits.exit_code == 0, hits.output
    names = [Path(json.loads(line)["path"]).name for line in hits.stdout.splitlines()]
    assert names[0] == "blue.png" and "red.png" not in names and "yellow.png" not in names and len(names) == 6


def test_interrupted_reembed_leaves_the_old_version_and_resumes(built):
    home, _ = built
    before = stored(home)
    Versioned.version = 2
    col = Collection.open(home, "c")
    seen = []

    def stop_after_a_few(advance, total):
        seen.append(advance)
        if sum(seen) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        col.reembed(progress=stop_after_a_few, batch_size=2, workers=0)
    col.close()
    middle = stored(home)
    assert all(np.array_equal(middle[k][1], before[k][1]) for k in before)  # every vector still version 1
    again = Collection.open(home, "c")
    with pytest.raises(EncoderMismatch, match="reembed"):
        again.search(text="red")
    staged = sqlite3.connect(home / "c" / META_FILE).execute("select count(*) from staged").fetchone()[0]
    assert staged >= 2
    report = again.reembed()
    assert report.resumed == staged and report.reembedded == 9 - staged
    want = expected_vectors(stored(home), home)
    assert all(np.allclose(v, want[k], atol=1e-6) for k, (_, v) in stored(home).items())
    assert sqlite3.connect(home / "c" / META_FILE).execute("select count(*) from staged").fetchone()[0] == 0


def test_killed_after_the_swap_reopens_consistent(built, monkeypatch):
    home, folder = built
    Versioned.version = 2
    col = Collection.open(home, "c")

    def killed(*args, **kwargs):
        raise SystemExit("killed")

    rebuild = Collection.rebuild_index
    monkeypatch.setattr(Collection, "rebuild_index", killed)
    with pytest.raises(SystemExit):
        col.reembed()
    monkeypatch.setattr(Collection, "rebuild_index", rebuild)
    col = Collection.open(home, "c")  # the store says v2 and dirty: the FAISS index is rebuilt from it
    hits = col.search(image=folder / "white.png", k=1)
    assert Path(hits[0].path).name == "white.png" and hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.needs_data
def test_unversioned_xsearch_mini_collection_is_old_once_mini_has_a_fingerprint(home, photos, mini):
    col = Collection.open(home, "m", encoder=mini, create=True)
    col.add([photos / "sub"])
    col.close()
    info = json.loads((home / "m" / INFO_FILE).read_text())  # as written before fingerprints existed
    info.pop("encoder_fingerprint", None)
    (home / "m" / INFO_FILE).write_text(json.dumps(info))
    con = sqlite3.connect(home / "m" / META_FILE)
    con.execute("delete from meta where key = 'encoder_fingerprint'")
    con.commit()
    con.close()
    assert mini.fingerprint.startswith("v2-")  # the shipped mini is versioned: an unversioned collection is old
    with pytest.raises(EncoderMismatch, match=r"built with xsearch-mini \(unversioned\); this xsearch has "
                                              rf"xsearch-mini {mini.fingerprint}: run `xsearch reindex --reembed -c m`"):
        Collection.open(home, "m").search(text="a motorcycle")
    col = Collection.open(home, "m")
    assert col.reembed().reembedded == 1
    assert Path(col.search(text="a motorcycle", k=1)[0].path).name == "motorcycle.jpg"


def test_a_file_changed_between_an_interrupted_and_a_resumed_reembed_gets_its_new_vector(built):
    home, folder = built
    col = Collection.open(home, "c")  # same version: a re-embed on request, interrupted half-way
    seen = []

    def stop(advance, total):
        seen.append(advance)
        if sum(seen) >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        col.reembed(progress=stop, batch_size=2, workers=0)
    Image.new("RGB", (32, 32), (0, 255, 255)).save(folder / "green.png")  # new content, re-indexed meanwhile
    assert col.add([folder]).updated == 1
    col.reembed()
    key = str((folder / "green.png").resolve())
    np.testing.assert_allclose(stored(home)[key][1], ENCODER.encode_images([folder / "green.png"])[0], atol=1e-6)
