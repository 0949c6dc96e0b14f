"""Ledger: a chunk's counts, in its chunk_ledger row (from which finalize sums the run) and in source_stats."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from app.core.text import stored_json
from workers.pipeline.normalize.normalizer import NormalizedChunk


@dataclass(frozen=True)
class ChunkCounts:
    fetched: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int


def record_counts(
    conn: psycopg.Connection,
    *,
    run_id: int,
    chunk_no: int,
    source: str,
    counts: ChunkCounts,
    skipped: int,
    chunk: NormalizedChunk,
    started: float | None,
) -> None:
    """Fill in the chunk's claimed ledger row and add its new records and rejections to the
    source's totals."""
    conn.execute(
        "UPDATE chunk_ledger SET fetched = %s, inserted = %s, updated = %s, unchanged = %s, rejected = %s,"
        " skipped = %s, max_incremental = %s::jsonb, observed_fields = %s::jsonb, committed_at = now(),"
        " duration_ms = %s WHERE run_id = %s AND chunk_no = %s",
        (counts.fetched, counts.inserted, counts.updated, counts.unchanged, counts.rejected, skipped,
         stored_json(chunk.max_incremental), stored_json(chunk.observed),
         None if started is None else round((time.monotonic() - started) * 1000), run_id, chunk_no),
    )
    if counts.inserted or counts.rejected:
        conn.execute(
            "INSERT INTO source_stats (source, records, rejected) VALUES (%s, %s, %s)"
            " ON CONFLICT (source) DO UPDATE SET records = source_stats.records + excluded.records,"
            " rejected = source_stats.rejected + excluded.rejected",
            (source, counts.inserted, counts.rejected),
        )
