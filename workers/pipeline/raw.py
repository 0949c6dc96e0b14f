"""Raw payloads: how a chunk of upstream items is kept in PostgreSQL between the fetch
and the normalize stage. Tasks carry (run_id, chunk_no), never the rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from app.raw_format import decode_rows, encode_rows
from workers.sources.base import RawItem

# The stored form ([line, record, error, raw_text] rows) is defined in app/raw_format.py,
# because webhook intake in the API writes raw chunks too.

# Payloads are a few hundred KB of JSON per chunk, written once and read once. TOAST's
# default pglz compressor costs the serial fetch stage about 3 s per million CSV rows;
# lz4 (PostgreSQL 14+, when built with it) about a third of that, for a slightly larger
# table. Transaction-scoped, and a server without lz4 keeps pglz.
_LZ4_FOR_THIS_TRANSACTION = (
    "SELECT set_config('default_toast_compression', CASE WHEN 'lz4' = ANY(enumvals) THEN 'lz4' ELSE setting END,"
    " true) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def encode_item(item: RawItem) -> list[Any]:
    if item.digest is None:
        return [item.line, item.record, item.error, item.raw_text]
    return [item.line, item.record, item.error, item.raw_text, item.digest.hex()]


def decode_items(payload: bytes) -> list[RawItem]:
    """Rows of 4 (webhook intake, rows without a digest) or 5 elements."""
    return [
        RawItem(row[1], row[0], row[2], row[3], bytes.fromhex(row[4]) if len(row) > 4 else None)
        for row in decode_rows(payload)
    ]


@dataclass(frozen=True)
class StoredChunk:
    items: list[RawItem]
    skipped: int  # rows recognised unchanged and left out before this chunk (unchanged.py)


def store_chunk(
    conn: psycopg.Connection, *, run_id: int, chunk_no: int, items: list[list[Any]], skipped: int = 0
) -> bool:
    """Store one chunk (committed); return True when it still needs normalising.

    A fetch that is re-driven after a crash produces the same chunk numbers; a chunk
    already stored is kept as it was, and only re-enqueued if its ledger row is absent.
    """
    with conn.transaction():
        conn.execute(_LZ4_FOR_THIS_TRANSACTION)
        conn.execute(
            "INSERT INTO raw_chunks (run_id, chunk_no, item_count, payload, skipped) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (run_id, chunk_no) DO NOTHING",
            (run_id, chunk_no, len(items), encode_rows(items), skipped),
        )
        done = conn.execute(
            "SELECT 1 FROM chunk_ledger WHERE run_id = %s AND chunk_no = %s", (run_id, chunk_no)
        ).fetchone()
    return done is None


def load_chunk(conn: psycopg.Connection, *, run_id: int, chunk_no: int) -> StoredChunk | None:
    row = conn.execute(
        "SELECT payload, skipped FROM raw_chunks WHERE run_id = %s AND chunk_no = %s", (run_id, chunk_no)
    ).fetchone()
    return StoredChunk(decode_items(row[0]), row[1]) if row else None
