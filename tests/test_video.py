"""Videos (the `video` extra, PyAV): clips the tests encode themselves, indexed as moments and found at their second."""
from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from conftest import DEV_PHOTOS, run, jsonl  # noqa: E402
from served import picture  # noqa: E402
from videos import solid, tone, write_clip  # noqa: E402
from xsearch import Collection  # noqa: E402
from xsearch.media_video import Sampling  # noqa: E402

STEP = Sampling().min_gap  # N: a scene change is sampled at most this late
CHECKER = picture((0, 0, 0), (255, 255, 255), "checker")
SCENES = [(solid((200, 40, 40)), 3.0), (CHECKER, 4.0), (picture((250, 140, 40), (120, 20, 60), "gradient"), 3.0)]


def noise(seconds: float, rate: int = 48_000, seed: int = 1) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """clip.mp4: red 0-3 s, checkerboard 3-7 s, gradient 7-10 s; a 440 Hz tone for 4 s then white noise."""
    folder = tmp_path_factory.mktemp("videos")
    write_clip(folder / "clip.mp4", SCENES, audio=np.concatenate([tone(4), noise(6)]), noise=2)
    return folder


@pytest.fixture(scope="module")
def home(clips, mini, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    with Collection.open(home, "v", encoder=mini, create=True) as col:
        report = col.add([clips])
    assert report.added == 1 and not report.skipped
    return home




def test_a_video_is_one_item_whose_moments_hold_the_vectors(home, clips):
    with Collection.open(home, "v", read_only=True) as col:
        rows = col.items()
        video = [r for r in rows if r.parent_id is None]
        moments = [r for r in rows if r.parent_id is not None]
        assert len(video) == 1 and video[0].modality == "video"
        assert video[0].duration == pytest.approx(10.0, abs=0.1) and (video[0].width, video[0].height) == (320, 240)
        assert len(col) == len(moments)  # FAISS holds the moments only
        assert col.stats()["counts"]["video"] == 1  # `info` counts the video file, not its moments
        kinds = {r.key.rsplit("#", 1)[1].split("@")[0] for r in moments}
        assert kinds == {"frame", "audio"}
        frames = sorted(r.t for r in moments if "#frame@" in r.key)
        assert frames[0] == 0.0 and all(b - a >= STEP - 1e-6 for a, b in zip(frames, frames[1:]))
        assert all(b - a <= Sampling().max_gap + 1e-6 for a, b in zip(frames, frames[1:] + [10.0]))
        assert any(abs(t - 3.0) <= STEP for t in frames) and any(abs(t - 7.0) <= STEP for t in frames)


def test_an_image_query_finds_the_second_its_scene_starts(home, clips, tmp_path):
    CHECKER.save(tmp_path / "q.png")
    hits = jsonl(run("query", "--image", tmp_path / "q.png", "--home", home, "-c", "v", "--modality", "video",
                     "--json").stdout)
    assert len(hits) == 1  # the moments of one video collapse into its best one
    best = hits[0]
    assert set(best) == {"rank", "score", "path", "modality", "text", "t"}
    assert best["modality"] == "video" and Path(best["path"]) == (clips / "clip.mp4").resolve()
    assert 3.0 - 1e-6 <= best["t"] < 3.0 + STEP


def test_all_moments_lists_every_moment_best_first(home, mini, tmp_path):
    CHECKER.save(tmp_path / "q.png")
    with Collection.open(home, "v", encoder=mini, read_only=True) as col:
        best = col.search(image=tmp_path / "q.png", k=10)
        hits = col.search(image=tmp_path / "q.png", modality="video", k=50, all_moments=True)
        assert len(hits) == len(col) > 1 and len(best) == 1
    assert len({h.path for h in hits}) == 1 and len({h.t for h in hits}) >= len(hits) // 2
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert (hits[0].t, hits[0].id) == (best[0].t, best[0].id)
    with Collection.open(home, "v", encoder=mini, read_only=True) as col:  # file-time filters apply to moments
        assert col.search(image=tmp_path / "q.png", k=3, since=datetime(2000, 1, 1))[0].t == best[0].t
        assert col.search(image=tmp_path / "q.png", k=3, until=datetime(2000, 1, 1)) == []


def test_the_sound_track_is_searchable_by_sound(home, mini, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "noise.wav", noise(3, 16_000, seed=7), 16_000)
    with Collection.open(home, "v", encoder=mini, read_only=True) as col:
        audio = col.search(audio=tmp_path / "noise.wav", modality="video", k=50, all_moments=True)
        rows = col.store.get([h.id for h in audio])
    best_sound = next(h for h in audio if "#audio@" in rows[h.id].key)
    assert best_sound.t >= 4.0 - 1e-6  # the noise, not the tone (0-4 s)


def test_reindexing_an_unchanged_video_is_unchanged_and_a_changed_one_replaces_its_moments(mini, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    write_clip(folder / "a.mkv", SCENES[:2], noise=2)
    with Collection.open(tmp_path / "home", "v", encoder=mini, create=True) as col:
        assert col.add([folder]).added == 1
        before = {r.key for r in col.items() if r.parent_id is not None}
        again = col.add([folder])
        assert (again.unchanged, again.added, again.updated) == (1, 0, 0)
        ids = {r.key: r.id for r in col.items()}
        vecs = col.vectors([i for k, i in ids.items() if "#" in k])
        redone = col.reembed()  # `reindex --reembed`: moments found again keep their ids
        assert redone.dropped == [] and redone.reembedded == len(ids)
        assert {r.key: r.id for r in col.items()} == ids and len(col) == len(ids) - 1
        np.testing.assert_allclose(col.vectors([i for k, i in ids.items() if "#" in k]), vecs, atol=1e-4)
        write_clip(folder / "a.mkv", [(CHECKER, 2.0), (solid((30, 30, 200)), 6.0)], noise=2)
        assert col.add([folder]).updated == 1
        after = [r for r in col.items() if r.parent_id is not None]
        assert len(col) == len(after) and f"{folder / 'a.mkv'}#frame@3.000" in before
        frames = {r.t for r in after if "#frame@" in r.key}
        assert 3.0 not in frames and 2.0 in frames and max(frames) >= 5.0  # the new clip's scenes only
        (folder / "a.mkv").unlink()
        assert col.add([folder]).removed == 1 + len(after) and len(col) == 0
    with Collection.open(tmp_path / "home", "v") as col:  # index and store agree: nothing rebuilt or lost
        assert len(col) == 0 and col.items() == []


def test_a_broken_or_truncated_video_is_a_one_line_reason(mini, tmp_path, clips):
    folder = tmp_path / "bad"
    folder.mkdir()
    data = (clips / "clip.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "garbage.webm").write_bytes(b"\x1aE\xdf\xa3 not really a video" * 20)
    (folder / "empty.avi").write_bytes(b"")
    shutil.copy(clips / "clip.mp4", folder / "good.mp4")
    home = tmp_path / "home"
    result = run("index", folder, "--home", home, "-c", "v", "--json")
    report = json.loads(result.stdout)
    assert report["added"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated.mp4", "garbage.webm", "empty.avi"}
    for name, reason in reasons.items():
        assert "\n" not in reason and name in reason


def test_without_pyav_a_video_is_skipped_with_the_extra_to_install(mini, tmp_path, clips, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    shutil.copy(clips / "clip.mp4", tmp_path / "clip.mp4")
    (tmp_path / "note.txt").write_text("a short note")
    with Collection.open(tmp_path / "home", "v", encoder=mini, create=True) as col:
        report = col.add([tmp_path / "clip.mp4", tmp_path / "note.txt"])
    assert report.added == 1 and len(report.skipped) == 1
    assert "xsearch[video]" in report.skipped[0][1] and "clip.mp4" in report.skipped[0][1]


def test_the_server_returns_the_moment_and_its_frame(home, clips):
    from fastapi.testclient import TestClient
    from PIL import Image
    import io

    from xsearch.server import create_app

    with TestClient(create_app(home, ["v"]), base_url="http://127.0.0.1:8000") as client:
        hits = client.get("/api/search", params={"q": "a checkerboard", "modality": "video"}).json()["hits"]
        assert len(hits) == 1 and hits[0]["modality"] == "video" and "t" in hits[0]
        many = client.get("/api/search", params={"q": "a checkerboard", "modality": "video", "all_moments": "true",
                                                 "k": 50}).json()["hits"]
        assert len(many) > 1 and many[0]["t"] == hits[0]["t"]
        thumb = client.get(f"/api/items/{hits[0]['id']}/thumbnail", params={"size": 160})
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] == 160
        item = client.get(f"/api/items/{hits[0]['id']}").json()
        assert item["t"] == hits[0]["t"] and item["parent_id"] is not None


@pytest.mark.slow
@pytest.mark.needs_data
def test_a_cat_finds_the_second_chelsea_appears(mini, tmp_path):
    """Dev photos assembled into a clip; "a cat" must land on chelsea.jpg's second (6 s) within one sampling step."""
    from PIL import Image

    names = ["rocket.jpg", "coffee.jpg", "chelsea.jpg", "motorcycle.jpg", "moon.jpg"]
    scenes = [(Image.open(DEV_PHOTOS / n), 3.0) for n in names]
    folder = tmp_path / "v"
    folder.mkdir()
    write_clip(folder / "photos.mp4", scenes, size=(480, 320), audio=tone(15), noise=2)
    with Collection.open(tmp_path / "home", "default", encoder=mini, create=True) as col:
        col.add([folder])
    hits = jsonl(run("query", "a cat", "--home", tmp_path / "home", "-m", "video", "--json").stdout)
    assert hits[0]["modality"] == "video" and 6.0 - STEP <= hits[0]["t"] <= 6.0 + STEP


def test_tag_video_labels_each_video_by_its_best_frame_and_query_tag_finds_its_moments(mini, tmp_path):
    from PIL import Image

    folder = tmp_path / "v"
    folder.mkdir()
    for name, shots in (("cat.mp4", ["rocket.jpg", "chelsea.jpg"]), ("cup.mp4", ["motorcycle.jpg", "coffee.jpg"])):
        write_clip(folder / name, [(Image.open(DEV_PHOTOS / n), 3.0) for n in shots], size=(320, 240))
    home = tmp_path / "home"
    run("index", folder, "--home", home, "-q")
    out = jsonl(run("tag", "--home", home, "-m", "video", "--labels", "cat,cup of coffee,lighthouse", "-k", "1",
                    "--json").stdout)
    assert {Path(o["path"]).name: o["tags"][0]["tag"] for o in out} == {"cat.mp4": "cat", "cup.mp4": "cup of coffee"}
    hits = jsonl(run("query", "a photo", "--home", home, "-m", "video", "--tag", "cat", "--json").stdout)
    assert [Path(h["path"]).name for h in hits] == ["cat.mp4"] and hits[0]["t"] is not None
    assert run("tag", "--home", home, "-m", "films", "--labels", "cat", ok=False).exit_code == 1


def test_a_schema_1_collection_gains_video_moments_on_the_next_index(mini, tmp_path, clips):
    """A collection written before videos (schema 1: no ``t`` column) is read as it is, then migrated by a writer."""
    import sqlite3

    folder = tmp_path / "m"
    folder.mkdir()
    CHECKER.save(folder / "checker.png")
    home = tmp_path / "home"
    with Collection.open(home, "v", encoder=mini, create=True) as col:
        col.add([folder])
    db = home / "v" / "meta.sqlite"
    con = sqlite3.connect(db)
    for index in ("ix_items_taken", "ix_items_lat"):
        con.execute(f"DROP INDEX IF EXISTS {index}")
    for column in ("taken", "camera_make", "camera_model", "lens", "lat", "lon", "meta_version", "t"):
        con.execute(f"ALTER TABLE items DROP COLUMN {column}")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    with Collection.open(home, "v", encoder=mini, read_only=True) as col:  # a reader sees t as None
        assert [h.t for h in col.search(image=folder / "checker.png", k=1)] == [None]
    shutil.copy(clips / "clip.mp4", folder / "clip.mp4")
    with Collection.open(home, "v", encoder=mini) as col:
        assert col.add([folder]).added == 1
        hit = col.search(image=folder / "checker.png", modality="video", k=1)[0]
        assert hit.modality == "video" and 3.0 - 1e-6 <= hit.t < 3.0 + STEP
