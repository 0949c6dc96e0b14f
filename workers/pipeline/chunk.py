"""The normalize-and-upsert stage for one chunk: load raw, normalize, write, finalize."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from app.sources_config import SourceConfig
from workers.pipeline.drift import load_known
from workers.pipeline.finalize import fail_run, finalize_run
from workers.pipeline.normalize import Normalizer
from workers.pipeline.raw import load_chunk
from workers.pipeline.upsert import ChunkCounts, write_chunk


@dataclass(frozen=True)
class ChunkOutcome:
    counts: ChunkCounts | None  # None: already committed, or the run is no longer active
    run_status: str | None  # set when this chunk finished the run


def start_attempt(conn: psycopg.Connection, run_id: int, chunk_no: int, max_attempts: int) -> bool:
    """Count a delivery of this chunk; fail the run and return False past the limit.

    A copy of a chunk that already committed (a redelivery, or a re-drive of a chunk that
    was only waiting in a long queue) is not an attempt: it returns False uncounted.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE raw_chunks c SET attempts = attempts + 1, enqueued_at = now()"
            " WHERE run_id = %s AND chunk_no = %s AND NOT EXISTS"
            " (SELECT 1 FROM chunk_ledger l WHERE l.run_id = c.run_id AND l.chunk_no = c.chunk_no)"
            " RETURNING attempts, last_error",
            (run_id, chunk_no),
        ).fetchone()
    if row is None:
        return False
    attempts, last_error = row
    if attempts > max_attempts:
        fail_run(conn, run_id, f"chunk {chunk_no} failed after {max_attempts} attempts: {last_error or 'worker lost'}")
        return False
    return True


def record_failure(conn: psycopg.Connection, run_id: int, chunk_no: int, error: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE raw_chunks SET last_error = %s WHERE run_id = %s AND chunk_no = %s",
            (error[:2000], run_id, chunk_no),
        )


def normalize_and_upsert(conn: psycopg.Connection, run_id: int, chunk_no: int) -> ChunkOutcome:
    """Process one chunk exactly once, however often it is delivered."""
    started = time.monotonic()
    row = conn.execute("SELECT source, config FROM runs WHERE id = %s", (run_id,)).fetchone()
    items = load_chunk(conn, run_id=run_id, chunk_no=chunk_no)
    conn.commit()
    if row is None or items is None:
        return ChunkOutcome(counts=None, run_status=None)
    source_name, config = row
    source = SourceConfig(**config)
    known = load_known(conn, source_name) if source.on_drift == "reject" else None
    conn.commit()
    normalized = Normalizer(source, known).normalize_chunk(items)
    counts = write_chunk(
        conn, run_id=run_id, chunk_no=chunk_no, source=source_name, fetched=len(items), chunk=normalized,
        started=started,
    )
    return ChunkOutcome(counts=counts, run_status=finalize_run(conn, run_id) if counts else None)
