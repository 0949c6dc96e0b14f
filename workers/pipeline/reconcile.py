"""Reconcile: re-drive work that stalled, so no run waits forever on a lost message.

Runs from beat every few seconds. Anything stalled longer than TASK_TIMEOUT_S is sent
again, and so is anything a dead worker process held (workers/liveness.py), within
seconds of its death; the ledger makes a duplicate delivery harmless. Attempt counters in the database
(runs.segment_attempts, raw_chunks.attempts) turn endless redelivery into a failed run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import structlog

from app.core.run_status import ACTIVE, RunStatus
from workers.liveness import DEAD_AFTER_S, FORGET_AFTER_S, HOLDER_DEAD_SQL
from workers.pipeline.finalize import fail_run, finalize_run

log = structlog.get_logger(__name__)

# Silent for TASK_TIMEOUT_S (a lost message), or held by a dead worker process (liveness.py).
_STALLED_FETCHES = f"""
SELECT id FROM runs
WHERE chunks_total IS NULL AND status = ANY(%(active)s) AND trigger <> 'webhook'
  AND (coalesce(heartbeat_at, created_at) < now() - make_interval(secs => %(timeout)s)
       OR (fetch_lease IS NOT NULL AND fetch_holder IS NOT NULL
           AND {HOLDER_DEAD_SQL.format(holder="runs.fetch_holder", dead_after="%(dead_after)s")}))
ORDER BY id
"""

# Not committed, and: taken by a process that died since, or, once the run's fetch is done,
# last sent TASK_TIMEOUT_S ago (a lost message; while the fetch goes on, chunks may wait
# that long in a backlog, and a re-driven fetch sends its segment's chunks again).
_STALLED_CHUNKS = f"""
SELECT c.run_id, c.chunk_no, c.attempts, c.last_error
FROM raw_chunks c
JOIN runs r ON r.id = c.run_id AND r.status = %(running_status)s
WHERE ((r.chunks_total IS NOT NULL AND c.enqueued_at < now() - make_interval(secs => %(timeout)s))
       OR (c.claimed_by IS NOT NULL AND c.enqueued_at < now() - make_interval(secs => %(dead_after)s)
           AND {HOLDER_DEAD_SQL.format(holder="c.claimed_by", dead_after="%(dead_after)s")}))
  AND NOT EXISTS (SELECT 1 FROM chunk_ledger l WHERE l.run_id = c.run_id AND l.chunk_no = c.chunk_no)
ORDER BY c.run_id, c.chunk_no
LIMIT 1000
"""

_FORGET_PROCESSES = "DELETE FROM worker_processes WHERE beat_at < now() - make_interval(secs => %s)"

# A push window whose close message was lost: the window length is far below the timeout.
_EXPIRED_PUSH_WINDOWS = """
SELECT id FROM runs
WHERE trigger = 'webhook' AND status = %(running_status)s AND chunks_total IS NULL
  AND started_at < now() - make_interval(secs => %(timeout)s)
"""

_COMPLETE_UNFINALIZED = """
SELECT r.id FROM runs r
WHERE r.status = %(running_status)s AND r.chunks_total IS NOT NULL
  AND (SELECT count(*) FROM chunk_ledger l WHERE l.run_id = r.id) >= r.chunks_total
"""


@dataclass
class ReconcileReport:
    fetches_redriven: list[int] = field(default_factory=list)
    chunks_redriven: list[tuple[int, int]] = field(default_factory=list)
    push_windows_closed: list[int] = field(default_factory=list)
    runs_finalized: list[int] = field(default_factory=list)
    runs_failed: list[int] = field(default_factory=list)


def reconcile_stalled(
    conn: psycopg.Connection,
    *,
    timeout_s: int,
    max_attempts: int,
    enqueue_fetch: Callable[[int], None],
    enqueue_chunk: Callable[[int, int], None],
    enqueue_close_push: Callable[[int], None] | None = None,
) -> ReconcileReport:
    """One pass over stalled runs and chunks."""
    report = ReconcileReport()
    params = {"timeout": timeout_s, "active": list(ACTIVE), "running_status": RunStatus.RUNNING,
              "dead_after": DEAD_AFTER_S}
    for (run_id,) in conn.execute(_STALLED_FETCHES, params).fetchall():
        # Reset the clock so the next pass does not send it again at once, and free the fetch
        # lease of the task that went silent: the one sent now takes it (fetch/segment.py).
        with conn.transaction():
            conn.execute(
                "UPDATE runs SET heartbeat_at = now(), fetch_lease = NULL, fetch_holder = NULL WHERE id = %s",
                (run_id,),
            )
        enqueue_fetch(run_id)
        report.fetches_redriven.append(run_id)
    conn.commit()
    if enqueue_close_push is not None:
        for (run_id,) in conn.execute(_EXPIRED_PUSH_WINDOWS, params).fetchall():
            enqueue_close_push(run_id)
            report.push_windows_closed.append(run_id)
        conn.commit()
    for run_id, chunk_no, attempts, last_error in conn.execute(_STALLED_CHUNKS, params).fetchall():
        if attempts >= max_attempts:
            reason = f"chunk {chunk_no} failed after {attempts} attempts: {last_error or 'worker lost'}"
            if fail_run(conn, run_id, reason):
                report.runs_failed.append(run_id)
            continue
        with conn.transaction():  # the dead holder forgotten: the next pass goes by age alone
            conn.execute(
                "UPDATE raw_chunks SET enqueued_at = now(), claimed_by = NULL WHERE run_id = %s AND chunk_no = %s",
                (run_id, chunk_no),
            )
        enqueue_chunk(run_id, chunk_no)
        report.chunks_redriven.append((run_id, chunk_no))
    conn.commit()
    for (run_id,) in conn.execute(_COMPLETE_UNFINALIZED, params).fetchall():
        conn.commit()
        if finalize_run(conn, run_id):
            report.runs_finalized.append(run_id)
    conn.commit()  # the loop's SELECT opened a transaction: end it, or the block below is a mere savepoint
    with conn.transaction():
        conn.execute(_FORGET_PROCESSES, (FORGET_AFTER_S,))
    if any(report.__dict__.values()):
        log.warning("reconciled", **report.__dict__)
    return report
