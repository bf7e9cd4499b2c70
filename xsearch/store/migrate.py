"""In-place schema migration of ``meta.sqlite``: nullable columns and indexes added by later versions.

A migration here is always additive: every column a newer model has and an older database lacks is nullable, so it
is added with ``ALTER TABLE ... ADD COLUMN`` (old rows read it as NULL) and its indexes are created. Only a writer
migrates; a reader of an older database loads the columns it has and sees the missing ones as ``None``
(see :func:`missing_columns`).
"""
from __future__ import annotations

from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.schema import CreateIndex
from sqlalchemy.engine import Connection, Engine

from ..errors import BadInput


def table_columns(conn: Connection, table: str) -> set[str]:
    """Names of the columns ``table`` has in the database (empty if the table does not exist)."""
    return {row[1] for row in conn.execute(text(f'PRAGMA table_info("{table}")'))}


def missing_columns(engine: Engine, table: Table) -> list[Column]:
    """Columns of the model ``table`` that the database's table lacks (none if the table itself is missing)."""
    with engine.connect() as conn:
        have = table_columns(conn, table.name)
    return [c for c in table.columns if have and c.name not in have]


def migrate(engine: Engine, metadata: MetaData, meta: dict[str, str] | None = None) -> list[str]:
    """Add every missing nullable column and missing index of ``metadata``'s tables, and set ``meta`` keys, in one
    ``BEGIN IMMEDIATE`` transaction (so two writers cannot both add a column). Returns ``table.column`` for each column
    added. ``BadInput`` if a missing column is not nullable (a change this additive scheme cannot make in place).
    """
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            added = _add_missing(cur, engine, metadata)
            for key, value in (meta or {}).items():
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except BaseException:
            raw.rollback()
            raise
        raw.commit()
        return added
    finally:
        raw.close()


def _add_missing(cur, engine: Engine, metadata: MetaData) -> list[str]:
    added = []
    for table in metadata.sorted_tables:
        have = {row[1] for row in cur.execute(f'PRAGMA table_info("{table.name}")').fetchall()}
        if not have:
            continue
        for col in table.columns:
            if col.name in have:
                continue
            if not col.nullable or col.primary_key:
                raise BadInput(f"{engine.url.database}: cannot add non-nullable column {table.name}.{col.name}")
            kind = col.type.compile(dialect=engine.dialect)
            cur.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {kind}')
            added.append(f"{table.name}.{col.name}")
        for index in table.indexes:
            cur.execute(str(CreateIndex(index, if_not_exists=True).compile(dialect=engine.dialect)))
    return added
