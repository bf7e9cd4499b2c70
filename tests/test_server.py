"""HTTP API of `xsearch serve` on a real collection (generated pictures, a note, a tone; real xsearch-mini, FAISS,
SQLite): search routes and filters, uploads, items/thumbnails/files by id only, auth, the error funnel, reopening
while `xsearch index` writes, and the CLI command."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from served import build_collection, build_home, make_folder, picture  # noqa: E402
from xsearch import Collection  # noqa: E402
from xsearch.server import create_app  # noqa: E402

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def served(tmp_path_factory, mini):
    """A home with collection 'gen' (and a copy 'gen2' for the switcher), built once for the module."""
    home, folder = build_home(tmp_path_factory.mktemp("served"), mini)
    SNAPSHOT.update(snapshot(home))
    return home, folder


SNAPSHOT: dict[str, tuple] = {}


def snapshot(home: Path) -> dict[str, tuple]:
    """The data files of every collection folder with size and mtime (SQLite's -shm/-wal reader files aside)."""
    return {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
            for name in ("gen", "gen2") for p in sorted((home / name).iterdir())
            if not p.name.endswith(("-shm", "-wal"))}


@pytest.fixture(scope="module")
def client(served):
    home, _ = served
    with TestClient(create_app(home, ["gen", "gen2"]), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def col(served):
    with Collection.open(served[0], "gen", read_only=True) as c:
        yield c


def ids_by_name(col) -> dict[str, int]:
    return {Path(r.path).name: r.id for r in col.items() if r.parent_id is None}


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# ---- search ---------------------------------------------------------------------------------------------------------
def test_text_search_returns_the_cli_json_plus_id_and_matches_the_python_api(client, col):
    r = client.get("/api/search", params={"q": "a red ball", "k": 5})
    assert r.status_code == 200
    hits = r.json()["hits"]
    expected = col.search(text="a red ball", k=5)
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert hits == [h.to_dict(with_id=True) for h in expected]
    assert set(hits[0]) == {"rank", "score", "path", "modality", "text", "id"}
    assert {h["modality"] for h in hits} <= {"image", "audio"}  # text -> image (and audio) by default


def test_every_cli_filter_and_min_score(client, col, served):
    _, folder = served
    only_text = client.get("/api/search", params={"q": "milk and bread", "modality": "text"}).json()["hits"]
    assert only_text and {h["modality"] for h in only_text} == {"text"}
    assert Path(only_text[0]["path"]).name == "note.txt"
    anyof = client.get("/api/search", params={"q": "a sound", "modality": ["audio", "text"], "k": 50}).json()["hits"]
    assert {h["modality"] for h in anyof} == {"audio", "text"}
    sub = client.get("/api/search", params={"q": "a shape", "under": str(folder / "sub"), "k": 50}).json()["hits"]
    assert sorted(Path(h["path"]).name for h in sub) == ["noise.jpg", "yellow-triangle.png"]
    stored = {r.id: tuple(t for t, _ in col.tags_of([r.id]).get(r.id, [])) for r in col.items()}
    rarest = min({t for tags in stored.values() for t in tags}, key=lambda t: sum(t in v for v in stored.values()))
    wanted = [i for i, tags in stored.items() if rarest in tags]  # the tag filter must return exactly these items
    tagged = client.get("/api/search", params={"q": "a shape", "tag": rarest, "k": 50}).json()["hits"]
    assert 0 < len(wanted) < len(stored) and sorted(h["id"] for h in tagged) == sorted(wanted)
    assert client.get("/api/search", params={"q": "x", "since": "2999-01-01"}).json()["hits"] == []
    assert client.get("/api/search", params={"q": "x", "until": "1990-01-01"}).json()["hits"] == []
    assert len(client.get("/api/search", params={"q": "x", "since": "1990-01-01", "k": 3}).json()["hits"]) == 3
    all_hits = client.get("/api/search", params={"q": "a red ball", "k": 50}).json()["hits"]
    cut = all_hits[2]["score"]
    kept = client.get("/api/search", params={"q": "a red ball", "k": 50, "min_score": cut}).json()["hits"]
    assert kept == [h for h in all_hits if h["score"] >= cut] and len(kept) < len(all_hits)


def test_image_upload_is_sniffed_not_trusted_by_name(client, col, served, tmp_path, monkeypatch):
    _, folder = served
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where uploads may be staged
    data = (folder / "checker.png").read_bytes()
    r = client.post("/api/search", files={"image": ("innocent.txt", data, "text/plain")}, params={"k": 3})
    assert r.status_code == 200
    top = r.json()["hits"][0]
    assert Path(top["path"]).name == "checker.png" and top["score"] == pytest.approx(1.0, abs=1e-3)
    bad = client.post("/api/search", files={"image": ("photo.jpg", b"#!/bin/sh\nrm -rf /\n", "image/jpeg")})
    assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]
    assert list(tmp_path.iterdir()) == []  # staged in a private temp folder, deleted after the query


def test_audio_upload_and_fused_query_with_weights(client, served):
    _, folder = served
    wav = (folder / "tone.wav").read_bytes()
    r = client.post("/api/search", files={"audio": ("clip.bin", wav)}, params={"k": 3})
    assert r.status_code == 200 and Path(r.json()["hits"][0]["path"]).name == "tone.wav"
    img = (folder / "sunset.jpg").read_bytes()
    image_only = client.post("/api/search", files={"image": ("q", img)}, data={"q": "milk and bread",
                                                                               "weights": "text=0,image=1"},
                             params={"k": 1}).json()["hits"][0]
    text_only = client.post("/api/search", files={"image": ("q", img)}, data={"q": "milk and bread",
                                                                              "weights": "text=1,image=0"},
                            params={"k": 1, "modality": "any"}).json()["hits"][0]
    assert Path(image_only["path"]).name == "sunset.jpg" and Path(text_only["path"]).name == "note.txt"
    assert client.post("/api/search", files={"image": ("q", img)}, data={"weights": "colour=2"}).status_code == 400
    assert client.post("/api/search", files={"audio": ("a.wav", b"RIFF....WAVEfmt nonsense")}).status_code == 400
    assert client.post("/api/search", data={}).status_code == 400


def test_decompression_bomb_and_oversized_uploads_are_refused(client):
    bomb = png_bytes(Image.new("1", (12_000, 12_000)))  # 144 Mpixels in a few kB
    assert len(bomb) < 100_000
    r = client.post("/api/search", files={"image": ("bomb.png", bomb)})
    assert r.status_code == 400 and ("bomb" in r.json()["error"] or "over the limit" in r.json()["error"])
    big = b"\0" * (21 * 1024 * 1024)
    r = client.post("/api/search", files={"image": ("big.png", big)})
    assert r.status_code == 413 and "limit" in r.json()["error"]


# ---- items, more like this, thumbnails, files ----------------------------------------------------------------------
def test_item_metadata_and_more_like_this(client, col):
    cid = ids_by_name(col)["red-circle.png"]
    item = client.get(f"/api/items/{cid}").json()
    assert item["name"] == "red-circle.png" and item["modality"] == "image" and (item["width"], item["height"]) == (256, 256)
    assert [t["tag"] for t in item["tags"]] == [t for t, _ in col.tags_of([cid])[cid]]
    similar = client.get(f"/api/items/{cid}/similar", params={"k": 4}).json()["hits"]
    assert len(similar) == 4 and cid not in [h["id"] for h in similar]
    assert [h["id"] for h in similar] == [h.id for h in col.similar(cid, k=4)]
    assert client.get("/api/items/987654").status_code == 404
    assert client.get("/api/items/987654/similar").json() == {"error": "no item 987654 in collection 'gen'"}


def test_thumbnails_are_bounded_jpegs_cached_outside_the_collection(client, col, served):
    home, _ = served
    before = {p.name: p.stat().st_mtime_ns for p in (home / "gen").iterdir()}
    cid = ids_by_name(col)["sunset.jpg"]
    r = client.get(f"/api/items/{cid}/thumbnail", params={"size": 100})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) <= 160
    cached = list((home / ".xsearch-cache" / "thumbs" / "gen").glob(f"{cid}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content
    assert client.get(f"/api/items/{cid}/thumbnail", params={"size": 100}).content == r.content
    caption = next(r for r in col.items() if r.parent_id is not None)
    assert client.get(f"/api/items/{caption.id}/thumbnail").status_code == 200  # a caption shows its image
    tone = ids_by_name(col)["tone.wav"]
    assert client.get(f"/api/items/{tone}/thumbnail").status_code == 404
    after = {p.name: p.stat().st_mtime_ns for p in (home / "gen").iterdir()}
    assert after == before  # the server never writes to the collection


def test_thumbnail_cache_stays_under_its_bound(served, col, tmp_path):
    home, _ = served
    app = create_app(home, ["gen"], thumb_cache_bytes=20_000, warm=False)
    app.state.thumbs.root = tmp_path / "thumbs"
    with TestClient(app, base_url=BASE) as c:
        for name, item_id in ids_by_name(col).items():
            if name.endswith((".png", ".jpg")):
                assert c.get(f"/api/items/{item_id}/thumbnail", params={"size": 640}).status_code == 200
    total = sum(p.stat().st_size for p in (tmp_path / "thumbs").rglob("*.jpg"))
    assert 0 < total <= 20_000


def test_original_file_streams_by_id_with_range_support(client, col, served):
    _, folder = served
    names = ids_by_name(col)
    r = client.get(f"/api/items/{names['night-sky.jpg']}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (folder / "night-sky.jpg").read_bytes()
    audio = client.get(f"/api/items/{names['tone.wav']}/file", headers={"Range": "bytes=0-43"})
    assert audio.status_code == 206 and audio.headers["content-type"] in ("audio/x-wav", "audio/wav")
    assert audio.content == (folder / "tone.wav").read_bytes()[:44]
    note = client.get(f"/api/items/{names['note.txt']}/file")
    assert note.text.startswith("Shopping list") and "sandbox" in note.headers["content-security-policy"]


@pytest.mark.parametrize("url", [
    "/api/items/../../../../etc/passwd",
    "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    "/api/items/..%2f..%2fetc%2fpasswd/file",
    "/api/items//etc/passwd/file",
    "/api/items/%2Fetc%2Fpasswd/file",
    "/api/items/1/file/../../../../etc/passwd",
    "/api/items/424242/file",
    "/api/items/-1/file",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
])
def test_path_traversal_gets_nothing(client, url):
    r = client.get(url)
    assert r.status_code in (400, 403, 404)
    assert b"root:" not in r.content


def test_files_that_became_symlinks_out_of_the_indexed_folder_are_refused(mini, tmp_path):
    folder = make_folder(tmp_path)
    home = tmp_path / "home"
    build_collection(home, folder, mini, name="links")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    with Collection.open(home, "links", read_only=True) as c:
        names = ids_by_name(c)
    (folder / "checker.png").unlink()
    (folder / "checker.png").symlink_to(secret)  # the indexed file now points outside its folder
    (folder / "sunset.jpg").unlink()
    (folder / "sunset.jpg").symlink_to(tmp_path / "nowhere.jpg")  # dangling
    with TestClient(create_app(home, ["links"], warm=False), base_url=BASE) as c:
        for route in ("file", "thumbnail"):
            r = c.get(f"/api/items/{names['checker.png']}/{route}")
            assert r.status_code == 403 and b"not yours" not in r.content
            assert c.get(f"/api/items/{names['sunset.jpg']}/{route}").status_code == 404
        assert c.get(f"/api/items/{names['night-sky.jpg']}/file").status_code == 200


# ---- collections, tags, similarity, health ------------------------------------------------------------------------
def test_collections_facets_info_and_switching(client, col, served):
    _, folder = served
    listed = client.get("/api/collections").json()
    assert [c["name"] for c in listed["collections"]] == ["gen", "gen2"] and listed["default"] == "gen"
    assert listed["collections"][0]["items"] == len(col)
    facets = client.get("/api/collections/gen/facets").json()
    assert {f["path"] for f in facets["folders"]} == {str(folder), str(folder / "sub")}
    assert {t["tag"] for t in facets["tags"]} <= {"red", "blue", "green", "yellow", "black and white"}
    info = client.get("/api/collections/gen2").json()
    assert info["encoder"] == "xsearch-mini" and info["items"] == len(col)
    assert client.get("/api/search", params={"q": "a red ball", "collection": "gen2"}).json()["collection"] == "gen2"
    missing = client.get("/api/search", params={"q": "x", "collection": "../gen"})
    assert missing.status_code == 404 and "no collection '../gen'" in missing.json()["error"]


def test_zero_shot_tags_and_similarity_matrix_agree_with_the_engine(client, col):
    names = ids_by_name(col)
    ids = [names["blue-square.png"], names["green-stripes.png"]]
    got = client.post("/api/tags", json={"labels": ["blue", "green", "red"], "ids": ids, "k": 2}).json()["items"]
    sims = col.similarity(["a photo of a blue.", "a photo of a green.", "a photo of a red."], list(col.vectors(ids)))
    for j, item in enumerate(got):
        best = np.argsort(-sims[:, j])[:2]
        assert [t["tag"] for t in item["tags"]] == [["blue", "green", "red"][i] for i in best]
        assert item["tags"][0]["score"] == pytest.approx(float(sims[best[0], j]), abs=1e-4)
    m = client.post("/api/similarity", json={"rows": ["a red ball", ids[0]], "cols": [ids[0], ids[1]]}).json()
    assert m["rows"][1] == f"#{ids[0]} blue-square.png" and m["matrix"][1][0] == pytest.approx(1.0, abs=1e-4)
    expected = col.similarity(["a red ball"], list(col.vectors(ids)))
    assert m["matrix"][0] == pytest.approx(expected[0].tolist(), abs=1e-4)
    assert client.post("/api/similarity", json={"rows": [], "cols": ["x"]}).status_code == 400
    assert client.post("/api/similarity", json={"rows": [424242], "cols": ["x"]}).status_code == 404


def test_health_readiness_docs_and_page(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    deadline = time.monotonic() + 60
    while client.get("/api/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/api/ready").json()["ready"] is True
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/api/nope").json() == {"error": "Not Found"}


# ---- security: token and Host ---------------------------------------------------------------------------------------
def test_token_guards_every_api_route_but_health(served):
    home, _ = served
    with TestClient(create_app(home, ["gen"], token="s3cret", warm=False), base_url="http://192.168.1.20:8000") as c:
        assert c.get("/api/search", params={"q": "x"}).status_code == 401
        wrong = c.get("/api/search", params={"q": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/items/1/file").status_code == 401
        ok = c.get("/api/search", params={"q": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["hits"]
        assert c.get("/api/collections", cookies={"xsearch_token": "s3cret"}).status_code == 200  # <img>/<audio>
        assert c.get("/api/health").status_code == 200 and c.get("/").status_code == 200


def test_loopback_server_refuses_foreign_host_headers(client):
    r = client.get("/api/search", params={"q": "x"}, headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403  # a DNS-rebinding page cannot read a loopback server
    assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200


# ---- robustness: a concurrent `xsearch index` ----------------------------------------------------------------------
@pytest.mark.slow
def test_queries_keep_working_while_the_collection_is_reindexed(mini, tmp_path):
    folder = make_folder(tmp_path)
    home = tmp_path / "home"
    build_collection(home, folder, mini, name="live")
    extra = tmp_path / "more"
    extra.mkdir()
    for i in range(40):
        picture((i * 6, 255 - i * 6, 90), (250, 250, 250), "ellipse" if i % 2 else "rectangle", seed=i).save(extra / f"new-{i:02d}.png")
    failures, statuses = [], []

    def write() -> None:
        try:
            with Collection.open(home, "live", encoder=mini) as w:
                for i in range(0, 40, 8):  # several commits, as `xsearch index` does batch by batch
                    w.add([extra / f"new-{j:02d}.png" for j in range(i, i + 8)])
                w.rebuild_index()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    with TestClient(create_app(home, ["live"], warm=False), base_url=BASE) as c:
        assert c.get("/api/search", params={"q": "a shape"}).status_code == 200
        writer = threading.Thread(target=write)
        writer.start()
        while writer.is_alive():
            r = c.get("/api/search", params={"q": "a circle", "k": 10})
            statuses.append(r.status_code)
            for h in r.json().get("hits", []):
                assert c.get(f"/api/items/{h['id']}").status_code in (200, 404)
        writer.join()
        assert not failures
        deadline, new = time.monotonic() + 30, 0
        while new < 40 and time.monotonic() < deadline:  # the files settle, then the server reopens
            final = c.get("/api/search", params={"q": "a circle", "k": 60}).json()["hits"]
            new = sum(Path(h["path"]).name.startswith("new-") for h in final)
            time.sleep(0.1)
    assert statuses and set(statuses) == {200}
    assert new == 40  # the reopened handle sees every new item


# ---- the command ----------------------------------------------------------------------------------------------------
def test_serve_refuses_a_public_host_without_token_and_unknown_collections(served):
    from typer.testing import CliRunner

    from xsearch.cli import app

    home, _ = served
    r = CliRunner().invoke(app, ["serve", "--home", str(home), "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "--token" in r.output
    r = CliRunner().invoke(app, ["serve", "--home", str(home), "-c", "nope"])
    assert r.exit_code == 1 and "no collection 'nope'" in r.output


def test_missing_server_packages_give_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from xsearch.errors import MissingDependency
    from xsearch.server import _require

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(MissingDependency, match=r'uvicorn: pip install -e "\.\[serve\]"'):
        _require()


@pytest.mark.slow
def test_xsearch_serve_answers_curl_style_requests(served):
    from served import free_port

    home, _ = served
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xsearch.cli", "serve", "--home", str(home), "-c", "gen",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.3)
        r = httpx.get(f"http://127.0.0.1:{port}/api/search?q=a+red+ball")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert json.loads(r.text)["hits"][0]["rank"] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in out


def test_a_public_host_with_token_warns_at_start(served, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from xsearch.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    r = CliRunner().invoke(app, ["serve", "--home", str(served[0]), "--host", "0.0.0.0", "--token", "t0k"])
    assert r.exit_code == 0, r.output
    assert "warning: serving on 0.0.0.0:8000" in r.output and calls[0]["host"] == "0.0.0.0"


def test_the_server_never_wrote_to_the_collections(served, client):
    """Every request of this module ran against 'gen'/'gen2': their folders are byte-for-byte as built."""
    assert SNAPSHOT and snapshot(served[0]) == SNAPSHOT
    assert all(p.stat().st_size == 0 for p in served[0].glob("*/meta.sqlite-wal"))  # no pending writes either
