"""Photo features on real files the tests write: schema migration, EXIF metadata and filters, HEIC/RAW, rotation."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DEV_PHOTOS
from xsearch.cli import app

runner = CliRunner()
V2_COLUMNS = ("taken", "camera_make", "camera_model", "lens", "lat", "lon", "meta_version")


def run(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


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
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(DEV_PHOTOS / name, folder / name)
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

    run("index", folder, "--home", home, "-q")
    assert set(V2_COLUMNS) <= columns(db)
    with Collection.open(home, read_only=True) as col:
        assert col.store.get_meta("schema_version") == "2" and not col.store.missing
        assert len(col) == 2
