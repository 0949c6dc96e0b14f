"""Claim: a chunk's first step, which decides whether this delivery writes it at all.

The ledger row (run_id, chunk_no) is inserted first: a second delivery of the same
chunk either finds it committed (and does nothing) or waits on the first delivery's
unique-index entry and then finds it. So a chunk that runs twice changes nothing the
second time.
"""

from __future__ import annotations

import psycopg

from app.core.run_status import RunStatus


def claim(conn: psycopg.Connection, *, run_id: int, chunk_no: int) -> bool:
    """Whether this delivery writes the chunk: the run is active and the chunk's ledger row
    was not there yet (now inserted with zero counts, which the ledger step fills in)."""
    # FOR KEY SHARE: chunks commit concurrently, and the fetch stage's heartbeat (an UPDATE
    # of non-key columns) does not wait for them, but finalize/fail (FOR UPDATE) wait for
    # in-flight chunks, so a run's counts always equal the sum of its ledger.
    active = conn.execute(
        "SELECT 1 FROM runs WHERE id = %s AND status = %s FOR KEY SHARE", (run_id, RunStatus.RUNNING)
    ).fetchone()
    if active is None:
        return False  # failed runs take no more data
    claimed = conn.execute(
        "INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected)"
        " VALUES (%s, %s, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING RETURNING 1",
        (run_id, chunk_no),
    ).fetchone()
    return claimed is not None
