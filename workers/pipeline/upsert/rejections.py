"""Rejections: a chunk's rejected rows, kept with their reason and raw data for inspection."""

from __future__ import annotations

import psycopg

from app.core.text import stored_json, stored_text
from workers.pipeline.normalize.normalizer import Rejection

_COPY_REJECTS = (
    "COPY rejected_records (run_id, source, chunk_no, line_no, external_id, reason, field, message, raw) FROM STDIN"
)


def write_rejections(
    conn: psycopg.Connection, *, run_id: int, source: str, chunk_no: int, rejections: list[Rejection]
) -> None:
    """Copy the chunk's rejections into rejected_records."""
    if not rejections:
        return
    with conn.cursor().copy(_COPY_REJECTS) as copy:
        for rej in rejections:
            copy.write_row(
                (
                    run_id, source, chunk_no, rej.line_no, stored_text(rej.external_id), rej.reason,
                    rej.field, stored_text(rej.message), stored_text(stored_json(rej.raw)),
                )
            )
