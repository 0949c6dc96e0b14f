"""Upsert: write one normalised chunk, its rejections and its ledger row in ONE transaction.

The steps, in order: claim (claim.py: the run is active, the chunk's ledger row is
inserted), records (records.py: those that changed, written so that a record the database
refuses is rejected alone: isolation.py), rejections (rejections.py), ledger
(ledger.py: the row's counts, the source's totals). Each step runs inside write_chunk's
transaction and none commits: a chunk is written whole or not at all. Claiming first is
what makes a chunk that runs twice change nothing the second time (see claim.py).
"""

from __future__ import annotations

import psycopg

from workers.pipeline.normalize.normalizer import NormalizedChunk
from workers.pipeline.upsert.claim import claim
from workers.pipeline.upsert.isolation import admissible, write_isolated
from workers.pipeline.upsert.ledger import ChunkCounts, record_counts
from workers.pipeline.upsert.records import write_records
from workers.pipeline.upsert.rejections import write_rejections

__all__ = ["ChunkCounts", "write_chunk"]


def write_chunk(
    conn: psycopg.Connection,
    *,
    run_id: int,
    chunk_no: int,
    source: str,
    fetched: int,
    chunk: NormalizedChunk,
    skipped: int = 0,
    started: float | None = None,
) -> ChunkCounts | None:
    """Commit one chunk; return its counts, or None when it was already committed or the
    run is no longer active (failed runs take no more data). `fetched` counts the chunk's
    rows, `skipped` the rows the fetch stage recognised unchanged and left out before it
    (both are fetched; the skipped are unchanged). `started` (time.monotonic() when the
    chunk's task began) gives the ledger's duration_ms."""
    with conn.transaction():
        if not claim(conn, run_id=run_id, chunk_no=chunk_no):
            return None
        records, refused = admissible(chunk.records)
        inserted, updated, unstorable = write_isolated(
            conn, records,
            lambda part, fresh_stage: write_records(conn, source=source, run_id=run_id, chunk_no=chunk_no,
                                                    records=part, fresh_stage=fresh_stage),
        )
        rejections = [*chunk.rejections, *refused, *unstorable]
        write_rejections(conn, run_id=run_id, source=source, chunk_no=chunk_no, rejections=rejections)
        rejected = len(rejections)
        counts = ChunkCounts(
            fetched=fetched + skipped,
            inserted=inserted,
            updated=updated,
            unchanged=fetched + skipped - inserted - updated - rejected,
            rejected=rejected,
        )
        record_counts(conn, run_id=run_id, chunk_no=chunk_no, source=source, counts=counts, skipped=skipped,
                      chunk=chunk, started=started)
    return counts
