"""Every CLI command through typer's CliRunner, on real photos with the real offline encoder."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import DEV_PHOTOS, run, jsonl

pytestmark = pytest.mark.needs_data



@pytest.fixture
def indexed(home, photos, mini):
    run("index", photos, "--home", home, "-q")
    return home



def test_index_then_query_json(indexed):
    hits = jsonl(run("query", "a cat", "--home", indexed, "--json", "-k", "3").stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert Path(hits[0]["path"]).name == "chelsea.jpg" and hits[0]["modality"] == "image"
    assert set(hits[0]) == {"rank", "score", "path", "modality", "text"}


def test_query_table_output(indexed):
    out = run("query", "a rocket", "--home", indexed).stdout
    assert "rocket.jpg" in out and "score" in out


def test_query_image_any_modality(indexed, photos):
    hits = jsonl(run("query", "--image", photos / "coffee.jpg", "--home", indexed, "--json").stdout)
    assert Path(hits[0]["path"]).name == "coffee.jpg"
    assert {"image", "text"} <= {h["modality"] for h in hits}


def test_query_file_runs_all_queries_in_one_process(indexed, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a cat\n\na rocket\na motorcycle\n")
    lines = jsonl(run("query", "--file", queries, "--home", indexed, "-k", "2").stdout)
    assert [l["query"] for l in lines] == ["a cat", "a rocket", "a motorcycle"]
    assert [Path(l["hits"][0]["path"]).name for l in lines] == ["chelsea.jpg", "rocket.jpg", "motorcycle.jpg"]


def test_reindex_reports_changes_as_json(indexed, photos):
    (photos / "rocket.jpg").unlink()
    (photos / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = json.loads(run("index", photos, "--home", indexed, "--json").stdout)
    assert report["removed"] == 1 and report["added"] == 0 and report["items"] == 4
    assert report["skipped"][0]["path"].endswith("bad.png") and "bad.png" in report["skipped"][0]["reason"]


def test_bad_file_message_on_stderr_and_exit_zero(indexed, photos):
    (photos / "zero.jpg").write_bytes(b"")
    result = run("index", photos, "--home", indexed)
    assert "zero.jpg" in result.stderr and "empty file" in result.stderr


def test_info_and_encoders(indexed):
    info = json.loads(run("info", "--home", indexed, "--json").stdout)
    assert info["encoder"] == "xsearch-mini" and info["items"] == 5 and info["counts"]["image"] == 4
    assert "xsearch-mini" in run("info", "--home", indexed).stdout
    names = [e["name"] for e in json.loads(run("encoders", "--json").stdout)]
    assert {"xsearch-mini", "openclip:...", "st:...", "align:..."} <= set(names)


def test_rm(indexed, photos):
    run("rm", photos / "sub", "--home", indexed, "-q")
    assert json.loads(run("info", "--home", indexed, "--json").stdout)["items"] == 4
    result = run("rm", photos / "sub", "--home", indexed, ok=False)
    assert result.exit_code == 1 and "not in collection" in result.stderr


def test_captions_option(home, photos, tmp_path):
    caps = tmp_path / "caps.csv"
    with open(caps, "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "caption"], ["photos/chelsea.jpg", "a ginger cat, close up"]])
    run("index", photos, "--captions", caps, "--home", home, "-q", "--workers", "2")
    hits = jsonl(run("query", "--image", photos / "chelsea.jpg", "--modality", "text", "--home", home, "--json").stdout)
    assert hits[0]["text"] == "a ginger cat, close up" and hits[0]["path"].endswith("chelsea.jpg")


def test_matrix_folder_vs_text_file(home, photos, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat\na rocket\n")
    out = tmp_path / "sim.npy"
    run("matrix", "--rows", texts, "--cols", photos / "sub", "--out", out, "--csv", "--plot", tmp_path / "sim.png")
    sim = np.load(out)
    assert sim.shape == (2, 1) and sim.dtype == np.float32
    assert (tmp_path / "sim.rows.txt").read_text().split("\n")[:2] == ["a cat", "a rocket"]
    assert (tmp_path / "sim.cols.txt").read_text().strip().endswith("motorcycle.jpg")
    assert (tmp_path / "sim.csv").read_text().startswith(",")
    assert (tmp_path / "sim.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_against_a_collection(indexed, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\n")
    out = tmp_path / "m.npy"
    run("matrix", "--rows", texts, "--cols", "collection:default", "--home", indexed, "--out", out, "-q")
    sim = np.load(out)
    labels = (tmp_path / "m.cols.txt").read_text().splitlines()
    assert sim.shape == (1, 5) and Path(labels[int(sim[0].argmax())]).name == "chelsea.jpg"


def test_tag_command_and_tag_filter(indexed):
    lines = jsonl(run("tag", "--labels", "cat,rocket,coffee,motorcycle", "-k", "1", "--home", indexed, "--json").stdout)
    best = {Path(l["path"]).name: l["tags"][0]["tag"] for l in lines}
    assert best["chelsea.jpg"] == "cat"
    hits = jsonl(run("query", "a photo", "--tag", "cat", "--home", indexed, "--json").stdout)
    assert [Path(h["path"]).name for h in hits] == ["chelsea.jpg"]
    assert run("tag", "--labels", "cat,rocket", "-k", "1", "--home", indexed, "-q").stdout == ""


@pytest.mark.parametrize("args", [["query", "a cat", "--json"], ["query", "a cat"], ["info"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(indexed, args):
    """`xsearch query ... | head -1`: no error line, exit 141 as for a shell tool killed by SIGPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "xsearch.cli", *args, "--home", str(indexed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before anything is written
    _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr.decode()) == (141, "")


@pytest.mark.parametrize("args, message", [
    (["query", "x", "--home", "{home}"], "no collection 'default'"),
    (["index", "{missing}", "--home", "{home}"], "no such file or folder"),
    (["query", "--image", "{missing}", "--home", "{indexed}"], "no such file"),
    (["query", "x", "-k", "0", "--home", "{indexed}"], "-k must be at least 1"),
    (["query", "x", "--modality", "smell", "--home", "{indexed}"], "unknown modality"),
    (["index", "{photos}", "--encoder", "nope:thing", "--home", "{home}"], "unknown encoder"),
])
def test_errors_are_one_line_with_exit_code(args, message, home, indexed, photos, tmp_path):
    subs = {"home": tmp_path / "other-home", "indexed": indexed, "missing": tmp_path / "missing.jpg", "photos": photos}
    result = run(*[a.format(**subs) for a in args], ok=False)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_encoder_mismatch_exit_code(indexed, photos, tiny_clip):
    result = run("index", photos, "--encoder", tiny_clip, "--home", indexed, ok=False)
    assert result.exit_code == 1 and "built with encoder 'xsearch-mini'" in result.stderr


def test_dev_photos_retrieval_floor(home, tmp_path):
    """Text→image recall of the offline default on 20 real photos with 40 plain queries, end to end via the CLI."""
    run("index", DEV_PHOTOS, "--home", home, "-q")
    rows = list(csv.DictReader(open(DEV_PHOTOS / "queries.csv")))
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(r["query"] for r in rows) + "\n")
    lines = jsonl(run("query", "--file", queries, "--home", home, "-k", "5").stdout)
    ranks = [[Path(h["path"]).name for h in l["hits"]].index(r["file"]) if r["file"] in
             [Path(h["path"]).name for h in l["hits"]] else 99 for r, l in zip(rows, lines)]
    r1 = np.mean([r == 0 for r in ranks])
    r5 = np.mean([r < 5 for r in ranks])
    assert len(lines) == 40
    assert r1 >= 0.6 and r5 >= 0.8, (r1, r5)


def test_index_and_query_with_a_local_openclip_checkpoint(home, photos, tiny_clip):
    run("index", photos, "--encoder", tiny_clip, "--home", home, "-c", "clip", "-q")
    info = json.loads(run("info", "--home", home, "-c", "clip", "--json").stdout)
    assert info["encoder"] == tiny_clip and info["dim"] == 16 and info["items"] == 5
    hits = jsonl(run("query", "--image", photos / "rocket.jpg", "--home", home, "-c", "clip", "--json").stdout)
    assert Path(hits[0]["path"]).name == "rocket.jpg" and len(hits) == 5


def test_index_choice_reindex_and_time_filter(home, photos):
    run("index", photos, "--home", home, "--index", "hnsw", "-q")
    info = json.loads(run("info", "--home", home, "--json").stdout)
    assert info["index"]["kind"] == "hnsw" and info["index_request"] == "hnsw" and info["index"]["recall"] >= 0.95
    assert Path(jsonl(run("query", "a cat", "--home", home, "--json").stdout)[0]["path"]).name == "chelsea.jpg"
    spec = json.loads(run("reindex", "--index", "flat", "--home", home, "--json").stdout)
    assert spec["kind"] == "flat"
    assert json.loads(run("info", "--home", home, "--json").stdout)["index"]["kind"] == "flat"
    old = photos / "sub" / "motorcycle.jpg"
    os.utime(old, (0, 0))
    run("index", photos, "--home", home, "-q")
    hits = jsonl(run("query", "a photo", "--until", "1990-01-01", "--home", home, "--json").stdout)
    assert [Path(h["path"]).name for h in hits] == ["motorcycle.jpg"]
    hits = jsonl(run("query", "a photo", "--since", "1990-01-01", "--home", home, "--json").stdout)
    assert "motorcycle.jpg" not in [Path(h["path"]).name for h in hits] and len(hits) == 3


def _sounds(folder: Path) -> None:
    """Three synthesised clips of sound classes the shipped audio tower was trained on, plus a corrupt one."""
    import soundfile as sf

    sr, t = 22_050, np.arange(int(2.5 * 22_050)) / 22_050
    sf.write(folder / "tone.wav", (0.4 * np.sin(2 * np.pi * 660 * t)).astype(np.float32), sr)
    sf.write(folder / "noise.flac", (0.3 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32), sr)
    clicks = np.zeros(t.size, np.float32)
    for start in range(1000, t.size, sr // 4):
        clicks[start:start + 64] = 0.8
    sf.write(folder / "clicks.wav", clicks, sr)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")


def test_mixed_collection_answers_text_to_audio_and_audio_to_text(home, photos):
    _sounds(photos)
    (photos / "tone-note.txt").write_text("a sine tone")
    (photos / "noise-note.txt").write_text("white noise")
    report = json.loads(run("index", photos, "--home", home, "--json", "-q").stdout)
    assert [(Path(s["path"]).name, "unreadable audio" in s["reason"]) for s in report["skipped"]] == [("broken.wav", True)]
    info = json.loads(run("info", "--home", home, "--json").stdout)
    assert info["counts"]["audio"] == 3 and info["counts"]["image"] == 4
    from xsearch import Collection

    col = Collection.open(home, "default")
    meta = {Path(r.path).name: (r.duration, r.sample_rate) for r in col.store.rows(modalities=["audio"])}
    col.close()
    assert meta["noise.flac"] == (pytest.approx(2.5, abs=1e-3), 22_050)

    for query, name in (("white noise", "noise.flac"), ("a sine tone", "tone.wav"), ("clicks", "clicks.wav")):
        hits = jsonl(run("query", query, "-m", "audio", "--home", home, "--json").stdout)
        assert Path(hits[0]["path"]).name == name and hits[0]["modality"] == "audio"
    hits = jsonl(run("query", "--audio", photos / "noise.flac", "-m", "text", "--home", home, "--json").stdout)
    assert hits[0]["text"] == "white noise"
    hits = jsonl(run("query", "--audio", photos / "tone.wav", "-k", "1", "--home", home, "--json").stdout)
    assert Path(hits[0]["path"]).name == "tone.wav" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)

    lines = jsonl(run("tag", "-m", "audio", "--labels", "sine tone,white noise,clicks,piano", "-k", "1",
                      "--home", home, "--json").stdout)
    assert {Path(l["path"]).name: l["tags"][0]["tag"] for l in lines} == {
        "tone.wav": "sine tone", "noise.flac": "white noise", "clicks.wav": "clicks"}


def test_unexpected_errors_are_one_line_unless_debugging(home, photos, monkeypatch):
    from xsearch import engine

    def broken(*args, **kwargs):
        raise RuntimeError("disk [full]\nsecond line")

    monkeypatch.setattr(engine.Collection, "add", broken)
    result = run("index", photos, "--home", home, ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "internal error: RuntimeError: disk [full] (XSEARCH_DEBUG=1 shows the traceback; please report it)"]
    monkeypatch.setenv("XSEARCH_DEBUG", "1")
    assert isinstance(run("index", photos, "--home", home, ok=False).exception, RuntimeError)
