"""Raw payloads: how a chunk of upstream items is kept in PostgreSQL between the fetch
and the normalize stage. Tasks carry (run_id, chunk_no), never the rows themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from app.core.raw_format import INSERT_RAW_CHUNK, REPEAT, decode_rows, raw_chunk_params
from workers.sources.base import RawItem, TabularRow

# The stored form ([line, record, error, raw_text] rows) is defined in app/core/raw_format.py,
# because webhook intake in the API writes raw chunks too.

# Payloads are a few hundred KB of JSON per chunk, written once and read once, by the
# serial fetch stage: lz4 (PostgreSQL 14+, when built with it) compresses them several
# times faster than TOAST's default pglz, for a slightly larger table (docs/benchmarks.md,
# "Performance knobs"). Transaction-scoped, and a server without lz4 keeps pglz.
_LZ4_FOR_THIS_TRANSACTION = (
    "SELECT set_config('default_toast_compression', CASE WHEN 'lz4' = ANY(enumvals) THEN 'lz4' ELSE setting END,"
    " true) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def encode_item(item: RawItem, columns: list[str] | None = None) -> list[Any]:
    """The stored row of an item; a tabular row whose columns are `columns` (the chunk's)
    is stored as its values, anything else as its record."""
    digest = None if item.digest is None else item.digest.hex()
    row: list[Any]
    if item.values is not None and item.columns is columns:
        row = [item.line, item.values, None, None, digest]
    elif digest is None and not item.repeat:
        return [item.line, item.record, item.error, item.raw_text]
    else:
        row = [item.line, item.record, item.error, item.raw_text, digest]
    if item.repeat:
        row.append(REPEAT)
    return row


def decode_items(payload: bytes, columns: list[str] | None = None) -> list[RawItem]:
    """Rows of 4 (webhook intake, rows without a digest), 5 or 6 elements (a later copy of
    an id, app/core/raw_format.py); with the chunk's `columns`, a row whose record is a list
    is a tabular row's values."""
    items: list[RawItem] = []
    append = items.append
    for row in decode_rows(payload):
        digest = bytes.fromhex(row[4]) if len(row) > 4 and row[4] is not None else None
        if columns is not None and type(row[1]) is list:
            item: RawItem = TabularRow(row[1], row[0], columns, digest)
        else:
            item = RawItem(row[1], row[0], row[2], row[3], digest)
        if len(row) > 5 and row[5] == REPEAT:
            item.repeat = True
        append(item)
    return items


@dataclass(frozen=True)
class StoredChunk:
    items: list[RawItem]
    skipped: int  # rows recognised unchanged and left out before this chunk (unchanged.py)


def store_chunk(
    conn: psycopg.Connection,
    *,
    run_id: int,
    chunk_no: int,
    items: list[list[Any]],
    skipped: int = 0,
    columns: list[str] | None = None,
    before: Callable[[psycopg.Connection], None] | None = None,
    after: Callable[[psycopg.Connection], None] | None = None,
) -> bool:
    """Store one chunk (committed); return True when it still needs normalising.

    `before` and `after` run in the same transaction (the fetch stage checks its lease
    first, and commits its resume position with a segment's last chunk). A fetch that is
    re-driven after a crash produces the same chunk numbers; a chunk already stored is
    kept as it was, and only re-enqueued if its ledger row is absent.
    """
    with conn.transaction():
        if before is not None:
            before(conn)
        conn.execute(_LZ4_FOR_THIS_TRANSACTION)
        conn.execute(
            INSERT_RAW_CHUNK,
            raw_chunk_params(run_id=run_id, chunk_no=chunk_no, rows=items, skipped=skipped, columns=columns),
        )
        done = conn.execute(
            "SELECT 1 FROM chunk_ledger WHERE run_id = %s AND chunk_no = %s", (run_id, chunk_no)
        ).fetchone()
        if after is not None:
            after(conn)
    return done is None


def load_chunk(conn: psycopg.Connection, *, run_id: int, chunk_no: int) -> StoredChunk | None:
    # In binary: a text result would carry the payload as hex, twice its size, encoded by
    # the server and decoded here, most of the time it takes to read a chunk.
    row = conn.execute(
        "SELECT payload, skipped, columns FROM raw_chunks WHERE run_id = %s AND chunk_no = %s",
        (run_id, chunk_no),
        binary=True,
    ).fetchone()
    return StoredChunk(decode_items(row[0], row[2]), row[1]) if row else None
