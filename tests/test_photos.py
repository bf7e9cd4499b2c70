"""Photo features on real files the tests write: schema migration, EXIF metadata and filters, HEIC/RAW, rotation."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import DEV_PHOTOS, run, jsonl

V2_COLUMNS = ("t", "taken", "camera_make", "camera_model", "lens", "lat", "lon", "meta_version")




def downgrade_to_v1(db: Path) -> None:
    """Turn a schema-2 meta.sqlite into what xsearch with schema 1 wrote (no photo columns, version 1)."""
    con = sqlite3.connect(db)
    con.execute("DROP INDEX ix_items_taken")
    con.execute("DROP INDEX ix_items_lat")
    for col in V2_COLUMNS:
        con.execute(f"ALTER TABLE items DROP COLUMN {col}")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()


def columns(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[1] for r in con.execute("PRAGMA table_info(items)")}
    finally:
        con.close()


@pytest.mark.needs_data
def test_old_schema_reads_without_writing_then_index_migrates(tmp_path, home, mini):
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(DEV_PHOTOS / "coffee.jpg", folder / "coffee.jpg")
    write_jpeg(folder / "chelsea.jpg", DEV_PHOTOS / "chelsea.jpg", taken="2020:05:01 10:00:00", make="Canon")
    run("index", folder, "--home", home, "-q")
    db = home / "default" / "meta.sqlite"
    downgrade_to_v1(db)
    before = db.read_bytes()

    from xsearch import Collection
    with Collection.open(home, read_only=True) as col:
        assert col.store.get_meta("schema_version") == "1"
        hits = col.search("a cat", k=1)
        assert Path(hits[0].path).name == "chelsea.jpg"
        row = col.item(hits[0].id)
        assert row.taken is None and row.camera_model is None
    hits = jsonl(run("query", "a cat", "--home", home, "--json", "-k", "1").stdout)
    assert Path(hits[0]["path"]).name == "chelsea.jpg"
    assert db.read_bytes() == before and not set(V2_COLUMNS) & columns(db)

    report = json.loads(run("index", folder, "--home", home, "--json").stdout)
    assert (report["added"], report["updated"], report["unchanged"]) == (0, 0, 2)  # EXIF re-read, nothing re-embedded
    assert set(V2_COLUMNS) <= columns(db)
    with Collection.open(home, read_only=True) as col:
        assert col.store.get_meta("schema_version") == "2" and not col.store.missing
        rows = {Path(r.path).name: r for r in col.items()}
        assert rows["chelsea.jpg"].camera_make == "Canon" and rows["chelsea.jpg"].taken.year == 2020
        assert rows["coffee.jpg"].meta_version == 1 and rows["coffee.jpg"].taken is None
        assert names(jsonl(run("query", "a cat", "--home", home, "--json", "--camera", "canon").stdout)) == ["chelsea.jpg"]


# ---- files the tests write ------------------------------------------------------------------------
def write_jpeg(path: Path, src: Path, *, taken: str | None = None, make: str | None = None, model: str | None = None,
               lens: str | None = None, gps: tuple[float, float] | None = None, orientation: int | None = None,
               pixels=None) -> Path:
    """A JPEG of ``src`` (or of ``pixels``) with the given EXIF tags (GPS as signed decimal degrees)."""
    from PIL import Image

    exif = Image.Exif()
    for tag, value in ((0x010F, make), (0x0110, model), (0x0112, orientation)):
        if value is not None:
            exif[tag] = value
    sub = exif.get_ifd(0x8769)
    if taken:
        sub[0x9003] = taken
    if lens:
        sub[0xA434] = lens
    if gps:
        g = exif.get_ifd(0x8825)
        for ref_tag, val_tag, value, refs in ((1, 2, gps[0], "NS"), (3, 4, gps[1], "EW")):
            a = abs(value)
            g[ref_tag] = refs[value < 0]
            g[val_tag] = (float(int(a)), float(int(a * 60 % 60)), round(a * 3600 % 60, 4))
    image = pixels if pixels is not None else Image.open(src).convert("RGB")
    image.save(path, exif=exif, quality=92)
    return path


def write_dng(path: Path, src: Path, make: str = "TestMake", model: str = "TestCam DNG") -> Path:
    """A real Bayer (RGGB, 12-bit) DNG of ``src`` that LibRaw demosaics; no embedded preview."""
    import numpy as np
    import tifffile
    from PIL import Image

    rgb = np.asarray(Image.open(src).convert("RGB")).astype(np.uint16)
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    rgb = rgb[:h, :w] * 16
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    xyz_to_srgb = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50706, "B", 4, (1, 4, 0, 0), True),
            (50708, "s", 0, model, True), (50721, "2i", 9, [v for x in xyz_to_srgb for v in (round(x * 1e4), 10000)], True),
            (50717, "H", 1, 4095, True), (50778, "H", 1, 21, True), (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),
            (271, "s", 0, make, True), (272, "s", 0, model, True)]
    tifffile.imwrite(path, cfa, photometric=32803, extratags=tags, subfiletype=0)
    return path


def write_heic(path: Path, src: Path, **exif_tags) -> Path:
    """A HEIC of ``src`` written by pillow-heif, with the EXIF of :func:`write_jpeg`."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    tmp = write_jpeg(path.with_suffix(".tmp.jpg"), src, **exif_tags)
    with Image.open(tmp) as im:
        im.save(path, exif=im.getexif(), quality=85)
    tmp.unlink()
    return path


def names(hits: list[dict]) -> list[str]:
    return [Path(h["path"]).name for h in hits]


# ---- EXIF metadata, filters, sort, cutoff -------------------------------------------------------------
@pytest.fixture
def tagged(tmp_path, home, mini) -> Path:
    """Four photos: two Canons (one with Paris GPS), a Nikon in New York, one with no EXIF; indexed."""
    folder = tmp_path / "tagged"
    folder.mkdir()
    write_jpeg(folder / "cat.jpg", DEV_PHOTOS / "chelsea.jpg", taken="2020:05:01 10:00:00", make="Canon",
               model="Canon EOS 5D Mark IV", lens="EF 50mm f/1.8", gps=(48.8566, 2.3522))
    write_jpeg(folder / "coffee.jpg", DEV_PHOTOS / "coffee.jpg", taken="2021:07:01 08:30:00", make="NIKON CORPORATION",
               model="NIKON D750", gps=(40.7128, -74.0060))
    write_jpeg(folder / "moto.jpg", DEV_PHOTOS / "motorcycle.jpg", taken="2019:01:01 12:00:00", make="Canon",
               model="Canon EOS R5")
    shutil.copy(DEV_PHOTOS / "rocket.jpg", folder / "rocket.jpg")
    run("index", folder, "--home", home, "-q")
    return home


def search(home, *args) -> list[dict]:
    return jsonl(run("query", "a photo", "--home", home, "--json", "-k", "10", *args).stdout)


@pytest.mark.needs_data
def test_exif_fields_are_stored(tagged):
    from xsearch import Collection

    with Collection.open(tagged, read_only=True) as col:
        rows = {Path(r.path).name: r for r in col.items()}
    cat = rows["cat.jpg"]
    assert (cat.camera_make, cat.camera_model, cat.lens) == ("Canon", "Canon EOS 5D Mark IV", "EF 50mm f/1.8")
    assert cat.taken.isoformat() == "2020-05-01T10:00:00"
    assert cat.lat == pytest.approx(48.8566, abs=1e-4) and cat.lon == pytest.approx(2.3522, abs=1e-4)
    assert rows["coffee.jpg"].lon == pytest.approx(-74.006, abs=1e-4)
    assert rows["rocket.jpg"].taken is None and rows["rocket.jpg"].meta_version == 1


@pytest.mark.needs_data
def test_ingest_reads_exif_from_the_decoded_file_not_a_second_open(tmp_path, home, mini, monkeypatch):
    """EXIF of JPEG, HEIC and DNG comes from the one read that hashed and decoded the file."""
    folder = tmp_path / "once"
    folder.mkdir()
    write_jpeg(folder / "cat.jpg", DEV_PHOTOS / "chelsea.jpg", taken="2020:05:01 10:00:00", make="Canon")
    write_heic(folder / "cat.heic", DEV_PHOTOS / "chelsea.jpg", taken="2022:01:02 03:04:05", make="Apple")
    write_dng(folder / "cat.dng", DEV_PHOTOS / "chelsea.jpg")

    def second_open(path):
        raise AssertionError(f"EXIF of {path} read again after decoding")

    monkeypatch.setattr("xsearch.media_formats.read_photo_meta", second_open)
    run("index", folder, "--home", home, "-q", "--workers", "0")
    from xsearch import Collection

    with Collection.open(home, read_only=True) as col:
        makes = {Path(r.path).name: (r.camera_make, r.taken and r.taken.year) for r in col.items()}
    assert makes == {"cat.jpg": ("Canon", 2020), "cat.heic": ("Apple", 2022), "cat.dng": ("TestMake", None)}


@pytest.mark.needs_data
def test_query_photo_filters(tagged):
    assert set(names(search(tagged, "--camera", "canon"))) == {"cat.jpg", "moto.jpg"}
    assert names(search(tagged, "--camera", "d750")) == ["coffee.jpg"]
    assert set(names(search(tagged, "--taken-after", "2020-01-01"))) == {"cat.jpg", "coffee.jpg"}
    assert names(search(tagged, "--taken-after", "2019-06-01", "--taken-before", "2020-12-31")) == ["cat.jpg"]
    assert names(search(tagged, "--near", "48.85,2.35,5")) == ["cat.jpg"]
    assert names(search(tagged, "--near", "40.73,-73.99,5")) == ["coffee.jpg"]
    assert search(tagged, "--near", "48.85,2.35,5", "--camera", "nikon") == []
    bad = run("query", "a photo", "--home", tagged, "--near", "91,0,5", ok=False)
    assert bad.exit_code == 1 and "latitude" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.needs_data
def test_sort_by_date_and_min_score(tagged):
    hits = search(tagged, "--sort", "date")
    dated = [n for n in names(hits) if n != "rocket.jpg"]
    assert dated == ["coffee.jpg", "cat.jpg", "moto.jpg"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert next(h for h in hits if names([h]) == ["cat.jpg"])["taken"] == "2020-05-01T10:00:00"
    by_score = search(tagged)
    scores = [h["score"] for h in by_score]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    cut = (scores[1] + scores[2]) / 2
    assert names(search(tagged, "--min-score", str(cut))) == names(by_score)[:2]
    info = json.loads(run("info", "--home", tagged, "--json").stdout)
    assert "min_score_default" in info
    auto = search(tagged, "--min-score", "auto")
    default = info["min_score_default"]
    assert all(h["score"] >= default for h in auto) if default is not None else len(auto) == 4


@pytest.mark.needs_data
def test_photo_filters_in_python_api(tagged):
    from xsearch import Collection

    with Collection.open(tagged, read_only=True) as col:
        hits = col.search("a cat", k=5, camera="CANON", taken_after=__import__("datetime").datetime(2020, 1, 1))
        assert [Path(h.path).name for h in hits] == ["cat.jpg"]
        assert [Path(h.path).name for h in col.search("a cat", near=(40.7, -74.0, 10))] == ["coffee.jpg"]


# ---- decoding: orientation, 16-bit, HEIC, RAW, missing decoders ---------------------------------------
def top_scores(home, query_image: Path) -> dict[str, float]:
    hits = jsonl(run("query", "--image", query_image, "--home", home, "--json", "-k", "10").stdout)
    return {Path(h["path"]).name: h["score"] for h in hits}


@pytest.mark.needs_data
def test_exif_rotated_photo_embeds_like_its_upright_self(tmp_path, home, mini):
    from PIL import Image

    folder = tmp_path / "rot"
    folder.mkdir()
    stored = Image.open(DEV_PHOTOS / "chelsea.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_90)
    write_jpeg(folder / "phone.jpg", DEV_PHOTOS / "chelsea.jpg", orientation=6, pixels=stored)  # viewer turns it upright
    write_jpeg(folder / "sideways.jpg", DEV_PHOTOS / "chelsea.jpg", pixels=stored)  # same pixels, no orientation tag
    shutil.copy(DEV_PHOTOS / "coffee.jpg", folder / "coffee.jpg")
    run("index", folder, "--home", home, "-q")
    scores = top_scores(home, DEV_PHOTOS / "chelsea.jpg")
    assert scores["phone.jpg"] > 0.97
    assert scores["phone.jpg"] > scores["sideways.jpg"] + 0.02
    from xsearch import Collection
    with Collection.open(home, read_only=True) as col:
        row = next(r for r in col.items() if r.path.endswith("phone.jpg"))
    assert (row.width, row.height) == Image.open(DEV_PHOTOS / "chelsea.jpg").size  # upright size


@pytest.mark.needs_data
def test_16bit_png_embeds_as_the_photo_not_white(tmp_path, home, mini):
    import numpy as np
    from PIL import Image

    from xsearch.media import load_image

    folder = tmp_path / "deep"
    folder.mkdir()
    gray = Image.open(DEV_PHOTOS / "chelsea.jpg").convert("L")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    decoded = np.asarray(load_image(folder / "deep.png"), np.float32)
    assert abs(decoded.mean() - np.asarray(gray).mean()) < 1.0
    shutil.copy(DEV_PHOTOS / "coffee.jpg", folder / "coffee.jpg")
    run("index", folder, "--home", home, "-q")
    gray.convert("RGB").save(tmp_path / "gray.png")
    scores = top_scores(home, tmp_path / "gray.png")
    assert scores["deep.png"] > 0.98 and scores["deep.png"] > scores["coffee.jpg"]


@pytest.mark.needs_data
def test_heic_and_dng_are_indexed_with_their_exif(tmp_path, home, mini):
    folder = tmp_path / "formats"
    folder.mkdir()
    write_heic(folder / "cat.heic", DEV_PHOTOS / "chelsea.jpg", taken="2022:01:02 03:04:05", make="Apple",
               model="iPhone 12", gps=(37.33, -122.03))
    write_dng(folder / "cat.dng", DEV_PHOTOS / "chelsea.jpg")
    shutil.copy(DEV_PHOTOS / "coffee.jpg", folder / "coffee.jpg")
    report = json.loads(run("index", folder, "--home", home, "--json").stdout)
    assert report["added"] == 3 and report["skipped"] == []
    hits = jsonl(run("query", "a cat", "--home", home, "--json", "-k", "3").stdout)
    assert set(names(hits)[:2]) == {"cat.heic", "cat.dng"}
    scores = top_scores(home, DEV_PHOTOS / "chelsea.jpg")
    assert scores["cat.heic"] > 0.95 and scores["cat.dng"] > 0.8 > scores["coffee.jpg"]
    assert names(search(home, "--camera", "iphone", "--near", "37.3,-122.0,10")) == ["cat.heic"]
    assert names(search(home, "--camera", "testcam")) == ["cat.dng"]
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from xsearch.server import create_app

    with TestClient(create_app(home, ["default"]), base_url="http://127.0.0.1:8000") as client:
        for hit in jsonl(run("query", "a cat", "--home", home, "--json", "-k", "2").stdout):
            r = client.get(f"/api/items/{hit.get('id') or _id(home, hit['path'])}/thumbnail", params={"size": 160})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert max(Image.open(io.BytesIO(r.content)).size) == 160


def _id(home: Path, path: str) -> int:
    from xsearch import Collection

    with Collection.open(home, read_only=True) as col:
        return next(r.id for r in col.items() if r.path == path)


@pytest.mark.needs_data
def test_missing_decoder_is_a_one_line_reason_naming_the_extra(tmp_path, home, mini, monkeypatch):
    import sys

    folder = tmp_path / "nodec"
    folder.mkdir()
    write_heic(folder / "a.heic", DEV_PHOTOS / "chelsea.jpg")
    write_dng(folder / "b.dng", DEV_PHOTOS / "coffee.jpg")
    shutil.copy(DEV_PHOTOS / "rocket.jpg", folder / "rocket.jpg")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import pillow_heif / rawpy now raise ImportError
    monkeypatch.setitem(sys.modules, "rawpy", None)
    monkeypatch.setattr("xsearch.media_formats._HEIF_DONE", [])
    report = json.loads(run("index", folder, "--home", home, "--json").stdout)
    assert report["added"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "pip install 'xsearch[heic]'" in reasons["a.heic"] and "\n" not in reasons["a.heic"]
    assert "pip install 'xsearch[raw]'" in reasons["b.dng"]


@pytest.mark.needs_data
def test_photo_filters_over_http(tagged):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xsearch.server import create_app

    with TestClient(create_app(tagged, ["default"]), base_url="http://127.0.0.1:8000") as client:
        def get(**params):
            r = client.get("/api/search", params={"q": "a photo", "k": 10, **params})
            return r.status_code, r.json()

        status, body = get(camera="canon")
        assert status == 200 and set(names(body["hits"])) == {"cat.jpg", "moto.jpg"}
        assert body["filters"]["camera"] == "canon"
        assert names(get(near="40.73,-73.99,5")[1]["hits"]) == ["coffee.jpg"]
        assert names(get(taken_after="2020-01-01", sort="date")[1]["hits"]) == ["coffee.jpg", "cat.jpg"]
        status, body = get(near="north")
        assert status == 400 and "LAT,LON,KM" in json.dumps(body)
