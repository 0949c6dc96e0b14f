"""Ending a run before its last chunk: failed by the pipeline, or cancelled on request.

Either way the run keeps the counts of the chunks that committed (the ledger's sums, so
fetched = inserted + updated + unchanged + rejected still holds) and its checkpoint does
not move. The run row is locked first (FOR UPDATE): in-flight chunks hold it FOR KEY
SHARE, so the lock waits for them and the sums read afterwards include them; chunks that
start later find the run no longer running and write nothing (upsert/claim.py).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from app.core.run_status import ACTIVE, RunStatus
from app.core.runs import RUN_COLUMNS

LOCK_RUN_SQL = "SELECT id, source, trigger, status FROM runs WHERE id = %(run_id)s FOR UPDATE"

# A separate statement from the lock: under READ COMMITTED it sees the chunks the lock waited for.
END_RUN_SQL = f"""
UPDATE runs SET status = %(status)s, finished_at = now(), error = %(error)s,
       fetched = t.fetched, inserted = t.inserted, updated = t.updated, unchanged = t.unchanged, rejected = t.rejected
FROM (SELECT coalesce(sum(fetched), 0) AS fetched, coalesce(sum(inserted), 0) AS inserted,
             coalesce(sum(updated), 0) AS updated, coalesce(sum(unchanged), 0) AS unchanged,
             coalesce(sum(rejected), 0) AS rejected
      FROM chunk_ledger WHERE run_id = %(run_id)s) AS t
WHERE runs.id = %(run_id)s
RETURNING {", ".join(f"runs.{column.strip()}" for column in RUN_COLUMNS.split(","))}
"""

CANCELLED_ERROR = "cancelled on request"


class RunNotFound(Exception):
    def __init__(self, run_id: int):
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class RunNotCancellable(Exception):
    """The run finished already, or it is a webhook window (its deliveries were acknowledged)."""

    def __init__(self, run: dict[str, Any]):
        if run["status"] not in ACTIVE:
            reason = (
                f"run {run['id']} already finished ({run['status']});"
                " only a queued or running run can be cancelled"
            )
        else:
            reason = (
                f"run {run['id']} is the open webhook window of '{run['source']}': its deliveries were accepted"
                " and will be stored; it cannot be cancelled"
            )
        super().__init__(reason)
        self.run = run


def end_params(run_id: int, status: RunStatus, error: str) -> dict[str, Any]:
    """The parameters of END_RUN_SQL."""
    return {"run_id": run_id, "status": status.value, "error": error[:2000]}


def check_cancellable(run: dict[str, Any] | None, run_id: int) -> None:
    """Raise unless the locked run (LOCK_RUN_SQL's row) may be cancelled."""
    if run is None:
        raise RunNotFound(run_id)
    if run["status"] not in ACTIVE or run["trigger"] == "webhook":
        raise RunNotCancellable(run)


def cancel_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    """Cancel a queued or running run (committed); the run as it ended."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LOCK_RUN_SQL, {"run_id": run_id})
        check_cancellable(cur.fetchone(), run_id)
        cur.execute(END_RUN_SQL, end_params(run_id, RunStatus.CANCELLED, CANCELLED_ERROR))
        ended = cur.fetchone()
    assert ended is not None
    return ended


def end_active_run(conn: psycopg.Connection, run_id: int, status: RunStatus, error: str) -> bool:
    """End an active run with this status and reason (committed); False when it had ended already."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LOCK_RUN_SQL, {"run_id": run_id})
        run = cur.fetchone()
        if run is None or run["status"] not in ACTIVE:
            return False
        cur.execute(END_RUN_SQL, end_params(run_id, status, error))
    return True
