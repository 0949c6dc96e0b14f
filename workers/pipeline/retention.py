"""Retention: raw chunks of finished runs are evidence for a while, then only disk.

A finished run (any status in FINISHED) never reads its raw chunks again: the reconciler
re-drives chunks of running runs only, and rejected records carry their own raw payload.
Chunks of runs that finished more than RAW_RETENTION_DAYS ago are deleted in small
batches, each its own short transaction, so pruning never holds locks ingestion waits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from app.core.run_status import FINISHED

_EXPIRED_RUNS = """
SELECT r.id FROM runs r
WHERE r.status = ANY(%(finished)s) AND r.finished_at < now() - make_interval(secs => %(retention_s)s)
  AND EXISTS (SELECT 1 FROM raw_chunks c WHERE c.run_id = r.id)
ORDER BY r.id
LIMIT %(runs)s
"""

# Through the primary key (run_id, chunk_no): a bounded range of one run's chunks.
_DELETE_BATCH = """
DELETE FROM raw_chunks WHERE run_id = %(run_id)s AND chunk_no IN (
    SELECT chunk_no FROM raw_chunks WHERE run_id = %(run_id)s ORDER BY chunk_no LIMIT %(batch)s
)
"""


# The ids a fetch kept between two segments (fetch/segment.py) serve only its next segment:
# a run that ended mid-fetch (failed, cancelled) leaves them behind, whatever the retention.
_DELETE_KEPT_IDS = """
DELETE FROM fetch_kept_ids k USING runs r WHERE r.id = k.run_id AND r.status = ANY(%(finished)s)
"""


@dataclass(frozen=True)
class PruneReport:
    runs: int
    chunks: int


def delete_expired_chunks(
    conn: psycopg.Connection, *, retention_days: float, batch: int = 200, max_chunks: int = 100_000
) -> PruneReport:
    """Delete raw chunks of runs finished more than `retention_days` ago, at most `max_chunks`
    per call (beat calls again within the hour)."""
    params = {"finished": list(FINISHED), "retention_s": retention_days * 86_400, "runs": 100}
    with conn.transaction():
        conn.execute(_DELETE_KEPT_IDS, params)
    runs = chunks = 0
    while chunks < max_chunks:
        expired = [run_id for (run_id,) in conn.execute(_EXPIRED_RUNS, params).fetchall()]
        conn.commit()
        if not expired:
            break
        for run_id in expired:
            while chunks < max_chunks:
                with conn.transaction():
                    deleted = conn.execute(_DELETE_BATCH, {"run_id": run_id, "batch": batch}).rowcount
                chunks += deleted
                if deleted < batch:
                    break
            runs += 1
    return PruneReport(runs=runs, chunks=chunks)
