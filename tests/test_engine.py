"""Collection API: incremental indexing, bad files, resume, captions, search, similarity, tags."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import DEV_PHOTOS
from xsearch import Collection
from xsearch.config import INFO_FILE, META_FILE, VECTORS_FILE
from xsearch.errors import BadInput, DimensionMismatch, EncoderMismatch, MissingCollection, SchemaTooNew

pytestmark = pytest.mark.needs_data


@pytest.fixture
def col(home, photos, mini):
    c = Collection.open(home, "photos", encoder=mini, create=True)
    c.add([photos])
    yield c
    c.close()


def names(hits):
    return [Path(h.path).name for h in hits]


def test_index_folder_writes_self_describing_collection(col, home, photos):
    folder = home / "photos"
    assert {INFO_FILE, VECTORS_FILE, META_FILE} <= {p.name for p in folder.iterdir()}
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["encoder"] == "xsearch-mini" and info["dim"] == 384 and info["schema_version"] == 1
    assert info["counts"] == {"image": 4, "text": 1}
    assert info["index"]["factory"]
    rows = {Path(r.path).name: r for r in col.items()}
    cat = rows["chelsea.jpg"]
    assert (cat.width, cat.height) > (0, 0) and len(cat.sha256) == 64 and cat.size == (photos / "chelsea.jpg").stat().st_size
    assert rows["note.txt"].text.startswith("Shopping list")


def test_text_query_finds_the_cat_and_returns_images_by_default(col):
    hits = col.search(text="a cat", k=3)
    assert names(hits)[0] == "chelsea.jpg"
    assert {h.modality for h in hits} == {"image"}
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score


def test_image_query_returns_itself_first_and_any_modality(col, photos):
    hits = col.search(image=photos / "rocket.jpg", k=5)
    assert names(hits)[0] == "rocket.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert "text" in {h.modality for h in hits}
    only_text = col.search(image=photos / "rocket.jpg", k=5, modality="text")
    assert [h.modality for h in only_text] == ["text"]


def test_reindex_is_incremental_add_modify_delete(col, photos):
    again = col.add([photos])
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 5)
    before = {Path(r.path).name: r.id for r in col.items()}
    shutil.copy(DEV_PHOTOS / "astronaut.jpg", photos / "coffee.jpg")  # same name, new content
    (photos / "rocket.jpg").unlink()
    shutil.copy(DEV_PHOTOS / "moon.jpg", photos / "sub" / "moon.jpg")
    report = col.add([photos])
    assert (report.added, report.updated, report.removed) == (1, 1, 1)
    after = {Path(r.path).name: r.id for r in col.items()}
    assert "rocket.jpg" not in after and "moon.jpg" in after and after["coffee.jpg"] == before["coffee.jpg"]
    assert len(col) == 5
    hit = col.search(image=DEV_PHOTOS / "astronaut.jpg", k=1)[0]  # the re-embedded vector is the new content's
    assert Path(hit.path).name == "coffee.jpg" and hit.score > 0.999


def test_touching_a_file_without_changing_it_does_not_reembed(col, photos):
    path = photos / "chelsea.jpg"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    report = col.add([photos])
    assert (report.added, report.updated, report.unchanged) == (0, 0, 5)


def test_corrupt_and_empty_files_are_reported_and_nothing_is_lost(col, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    (photos / "blank.txt").write_text("   ")
    report = col.add([photos])
    reasons = dict(report.skipped)
    assert set(map(lambda p: Path(p).name, reasons)) == {"broken.jpg", "empty.png", "blank.txt"}
    assert "empty" in reasons[str((photos / "empty.png").resolve())]
    assert all(str(Path(p).name) in r for p, r in report.skipped)
    assert len(col) == 5 and names(col.search(text="a cat", k=1)) == ["chelsea.jpg"]


def test_empty_folder_and_missing_path_are_clear_errors(home, tmp_path, mini):
    col = Collection.open(home, "e", encoder=mini, create=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no supported files"):
        col.add([tmp_path / "empty"])
    with pytest.raises(BadInput, match="no such file"):
        col.add([tmp_path / "missing"])


def test_interrupted_index_resumes_without_reembedding(home, photos, mini):
    col = Collection.open(home, "r", encoder=mini, create=True)
    calls = []

    def stop_after_first_batch(advance, total):
        calls.append(advance)
        if sum(calls) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        col.add([photos], progress=stop_after_first_batch, batch_size=2, workers=0)
    done = col.store.count()
    assert 0 < done < 5
    # simulate a killed process: the FAISS file on disk is stale and the store is marked dirty
    (home / "r" / VECTORS_FILE).unlink()
    col2 = Collection.open(home, "r")
    assert len(col2) == done
    report = col2.add([photos])
    assert report.unchanged == done and report.added == 5 - done and len(col2) == 5


def test_missing_or_stale_faiss_file_is_rebuilt_from_sqlite(col, home):
    col.close()
    (home / "photos" / VECTORS_FILE).write_bytes(b"garbage")
    again = Collection.open(home, "photos")
    assert len(again) == 5 and names(again.search(text="a cat", k=1)) == ["chelsea.jpg"]


def test_captions_are_text_items_linked_to_images(col, photos, tmp_path):
    caps = tmp_path / "caps.csv"
    caps.write_text("file,caption\nphotos/chelsea.jpg,a tabby cat looking at the camera\n"
                    "photos/rocket.jpg,a rocket lifting off\nphotos/nothere.jpg,missing\n")
    report = col.add([], captions=caps)
    assert report.captions == 2 and len(report.skipped) == 1 and "nothere.jpg" in report.skipped[0][1]
    hits = col.search(image=photos / "chelsea.jpg", k=1, modality="text")
    assert hits[0].text == "a tabby cat looking at the camera" and hits[0].path.endswith("chelsea.jpg")
    caps.write_text("file,caption\nphotos/rocket.jpg,a rocket lifting off\n")
    col.add([], captions=caps)
    assert [r.text for r in col.items(source=str(caps.resolve()))] == ["a rocket lifting off"]
    col.remove([photos / "rocket.jpg"])
    assert col.items(source=str(caps.resolve())) == []


def test_encoder_mismatch_is_refused(col, home, tiny_clip):
    col.close()
    with pytest.raises(EncoderMismatch, match="xsearch-mini"):
        Collection.open(home, "photos", encoder=tiny_clip)


def test_missing_collection_and_newer_schema(home, col):
    with pytest.raises(MissingCollection):
        Collection.open(home, "nope")
    info = json.loads((home / "photos" / INFO_FILE).read_text())
    info["schema_version"] = 99
    (home / "photos" / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(SchemaTooNew, match="upgrade"):
        Collection.open(home, "photos")


def test_wrong_dimension_vector_query(col):
    with pytest.raises(DimensionMismatch, match="384"):
        col.search(vector=np.ones(16, np.float32))


def test_filters_under_and_modality(col, photos):
    hits = col.search(text="a photo", k=10, under=[photos / "sub"])
    assert names(hits) == ["motorcycle.jpg"]
    assert [h.modality for h in col.search(text="coffee", k=10, modality="text")] == ["text"]
    assert len(col.search(text="a photo", k=10, modality="any")) == 5


def test_fused_query_moves_towards_the_text(col, photos):
    plain = col.search(image=photos / "coffee.jpg", k=4, modality="image")
    fused = col.search(image=photos / "coffee.jpg", text="a motorcycle", weights={"image": 0.3, "text": 1.0}, k=4,
                       modality="image")
    assert names(plain)[0] == "coffee.jpg" and names(fused)[0] == "motorcycle.jpg"


def test_similarity_matrix_matches_stored_vectors(col, photos):
    sim = col.similarity(["a cat", "a rocket"], [photos / "chelsea.jpg", photos / "rocket.jpg"])
    assert sim.shape == (2, 2) and sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]
    row = {Path(r.path).name: r for r in col.items()}["chelsea.jpg"]
    stored = col.vectors([row.id])[0]
    assert np.allclose(col.similarity([photos / "chelsea.jpg"], [stored]), 1.0, atol=1e-4)


def test_zero_shot_tags_are_stored_and_filterable(col):
    tags = col.tag(["cat", "rocket", "coffee", "motorcycle"], k=1)
    best = {Path(p).name: t[0][0] for p, t in tags.items()}
    assert best["chelsea.jpg"] == "cat" and best["rocket.jpg"] == "rocket"
    assert names(col.search(text="anything", k=5, tags=["rocket"])) == ["rocket.jpg"]


def test_remove_folder(col, photos):
    assert col.remove([photos / "sub"]) == 1
    assert len(col) == 4 and "motorcycle.jpg" not in names(col.search(text="a motorcycle", k=10))


def test_store_is_plain_sqlite(col, home):
    con = sqlite3.connect(home / "photos" / META_FILE)
    got = dict(con.execute("select modality, count(*) from items group by modality").fetchall())
    con.close()
    assert got == {"image": 4, "text": 1}


def test_read_only_open_searches_a_memory_mapped_index_and_refuses_writes(col, home, photos, mini):
    expected = names(col.search(text="a cat", k=3))
    ro = Collection.open(home, "photos", encoder=mini, read_only=True)
    assert ro.index.read_only and names(ro.search(text="a cat", k=3)) == expected
    with pytest.raises(BadInput, match="read-only"):
        ro.add([photos])
    with pytest.raises(BadInput, match="read-only"):
        ro.remove([photos / "chelsea.jpg"])
    ro.close()
    assert len(Collection.open(home, "photos", encoder=mini)) == 5


def test_plain_text_query_runs_no_sql_that_grows_with_the_collection(col, photos):
    """Which ids are images is cached per handle: after the first query, a text->image search reads only its k rows."""
    from sqlalchemy import event

    col.search(text="warm up", k=2)
    statements = []
    event.listen(col.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    hits = col.search(text="a cat", k=2)
    assert names(hits)[0] == "chelsea.jpg" and {h.modality for h in hits} == {"image"}
    assert len(statements) == 1 and "items.id IN" in statements[0] and "modality" not in statements[0].split("WHERE")[1]
    # the cache follows writes through the same handle
    (photos / "cat-note.txt").write_text("a cat")
    col.add([photos])
    assert "cat-note.txt" not in names(col.search(text="a cat", k=10))
    assert names(col.search(text="a cat", k=1, modality="text")) == ["cat-note.txt"]
    col.remove([photos / "chelsea.jpg"])
    assert "chelsea.jpg" not in names(col.search(text="a cat", k=10))
    assert {h.modality for h in col.search(text="a cat", k=10)} == {"image"} and len(col.search(text="x", k=10)) == 3


def test_filters_object_gives_the_same_hits_as_keywords(col, photos):
    from xsearch import Filters

    f = Filters(modalities=("image",), under=(str(photos / "sub"),))
    assert names(col.search(text="a photo", filters=f)) == names(col.search(text="a photo", modality="image",
                                                                              under=[photos / "sub"]))
    assert [h.modality for h in col.search_many(["coffee"], filters=Filters(modalities=("text",)))[0]] == ["text"]
    assert [Path(r.path).name for r in col.items(Filters(modalities=("text",)))] == ["note.txt"]
    with pytest.raises(BadInput, match="unknown modality 'smell'"):
        Filters(modalities=("smell",))


def test_items_by_id_files_and_more_like_this(col, photos):
    from xsearch import MissingItem

    hit = col.search(text="a cat", k=1)[0]
    assert hit.to_dict(with_id=True)["id"] == hit.id and "id" not in hit.to_dict()
    assert col.item(hit.id).path == hit.path and col.file_of(hit.id) == Path(hit.path)
    similar = col.similar(hit.id, k=3)
    assert hit.id not in [h.id for h in similar] and [h.rank for h in similar] == [1, 2, 3]
    with pytest.raises(MissingItem, match="no item 9999"):
        col.item(9999)
    (photos / "chelsea.jpg").unlink()
    with pytest.raises(MissingItem, match="is gone"):
        col.file_of(hit.id)


def test_read_only_open_never_writes_even_when_the_index_is_stale(col, home, photos, mini):
    expected = names(col.search(text="a rocket", k=2))
    col.store.set_meta("dirty", "1")  # as after a killed `xsearch index`
    col.close()
    (home / "photos" / VECTORS_FILE).unlink()
    info_before = (home / "photos" / INFO_FILE).read_bytes()
    ro = Collection.open(home, "photos", read_only=True)
    assert ro.read_only and names(ro.search(text="a rocket", k=2)) == expected
    for write in (lambda: ro.tag(["cat"]), lambda: ro.remove([photos]), lambda: ro.reembed(),
                  lambda: ro.rebuild_index()):
        with pytest.raises(BadInput, match="read-only"):
            write()
    ro.close()
    assert not (home / "photos" / VECTORS_FILE).exists() and (home / "photos" / INFO_FILE).read_bytes() == info_before
    assert Collection.open(home, "photos").store.get_meta("dirty") == "0"  # a writable open repairs it
    assert (home / "photos" / VECTORS_FILE).exists()
