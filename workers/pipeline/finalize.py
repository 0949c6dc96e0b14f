"""Finalize: close a run from its ledger, in ONE transaction with the checkpoint.

Called after every committed chunk and after the fetch stage; whichever call sees every
chunk committed does the work, under the run's row lock, exactly once. The checkpoint
only moves forward, and only here: a crash before this commit leaves it where it was,
and the next run re-reads the window (the upsert absorbs the overlap).

The validators that let the next run skip an unchanged source (file hash, ETag,
Last-Modified) are stored only by a run that finished cleanly: no fetch or chunk
delivered more than once. After a crash or a retry the next run reads the source in
full, even when it did not change, and repairs whatever the crash left; the fetch stage
also ignores them after a run that did not finish (fetch/stage.py, load_state).
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from app.core.run_end import end_active_run
from app.core.run_status import ACTIVE, RunStatus
from app.core.text import stored_json
from workers.pipeline.incremental import IncrementalOrder, Position, UncomparableValue, is_after
from workers.pipeline.normalize.drift import merge_observed, pause_source, record_drift

log = structlog.get_logger(__name__)

_LEDGER_TOTALS = """
SELECT count(*) AS chunks,
       coalesce(sum(fetched), 0) AS fetched, coalesce(sum(inserted), 0) AS inserted,
       coalesce(sum(updated), 0) AS updated, coalesce(sum(unchanged), 0) AS unchanged,
       coalesce(sum(rejected), 0) AS rejected
FROM chunk_ledger WHERE run_id = %s
"""

_LOOKS_COMPLETE = """
SELECT r.chunks_total IS NOT NULL AND r.status = ANY(%(active)s)
       AND (SELECT count(*) FROM chunk_ledger l WHERE l.run_id = r.id) >= r.chunks_total
FROM runs r WHERE r.id = %(run_id)s
"""

_SET_COUNTS = """
UPDATE runs SET status = %(status)s, finished_at = now(), error = %(error)s,
       fetched = %(fetched)s, inserted = %(inserted)s, updated = %(updated)s,
       unchanged = %(unchanged)s, rejected = %(rejected)s
WHERE id = %(run_id)s
"""

_SAVE_CHECKPOINT = """
INSERT INTO checkpoints (source, value, etag, last_modified, file_hash, run_id, updated_at)
VALUES (%(source)s, %(value)s::jsonb, %(etag)s, %(last_modified)s, %(file_hash)s, %(run_id)s, now())
ON CONFLICT (source) DO UPDATE SET
    value = excluded.value, etag = excluded.etag, last_modified = excluded.last_modified,
    file_hash = excluded.file_hash, run_id = excluded.run_id, updated_at = now()
"""


def _lock_active_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run_id,))
        run = cur.fetchone()
    if run is None or run["status"] not in ACTIVE:
        return None
    return run


def _ledger_totals(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_LEDGER_TOTALS, (run_id,))
        totals = cur.fetchone()
    assert totals is not None
    return totals


def finalize_run(conn: psycopg.Connection, run_id: int) -> str | None:
    """Finish the run if every chunk is committed; return the new status, or None.

    It runs after every chunk, so it first looks without locking: the run's row lock waits
    for every chunk still in flight, and a chunk that is not the last must not queue
    behind the others. The last chunk to commit always sees every chunk committed here.
    """
    with conn.transaction():
        looks_complete = conn.execute(_LOOKS_COMPLETE, {"active": list(ACTIVE), "run_id": run_id}).fetchone()
    if not (looks_complete and looks_complete[0]):
        return None
    with conn.transaction():
        run = _lock_active_run(conn, run_id)
        if run is None or run["chunks_total"] is None:
            return None
        totals = _ledger_totals(conn, run_id)
        if totals["chunks"] < run["chunks_total"]:
            return None
        status = RunStatus.finished_ok(rejected=totals["rejected"])
        note = _apply_drift(conn, run)
        conn.execute(_SET_COUNTS, {**totals, "status": status, "error": note, "run_id": run_id})
        _advance_checkpoint(conn, run)
    return status


def _apply_drift(conn: psycopg.Connection, run: dict[str, Any]) -> str | None:
    """Record schema drift of this run; with on_drift = "pause", pause the source and say why."""
    ledger = conn.execute(
        "SELECT observed_fields, skipped FROM chunk_ledger WHERE run_id = %s", (run["id"],)
    ).fetchall()
    observed = merge_observed(row[0] for row in ledger)
    policy = run["config"].get("on_drift", "record")
    events = record_drift(
        conn, source=run["source"], run_id=run["id"], observed=observed, adopt=policy != "reject",
        partial=any(row[1] for row in ledger),
    )
    if not events or policy != "pause":
        return None
    reason = "schema drift: " + ", ".join(event.describe() for event in events)
    pause_source(conn, source=run["source"], kind=run["config"]["kind"], schedule=run["config"]["schedule"],
                 reason=reason)
    return f"source paused after {reason}; resume it with `python -m app.cli resume {run['source']}`"


def _advance_checkpoint(conn: psycopg.Connection, run: dict[str, Any]) -> None:
    previous = conn.execute(
        "SELECT value, etag, last_modified, file_hash FROM checkpoints WHERE source = %s FOR UPDATE",
        (run["source"],),
    ).fetchone()
    old_value, old_etag, old_modified, old_hash = previous or (None, None, None, None)
    value = old_value
    config = run["config"]
    order = IncrementalOrder.of(config.get("incremental_field"), config.get("types") or {})
    if order is not None:
        maxima = conn.execute(
            "SELECT max_incremental FROM chunk_ledger WHERE run_id = %s AND max_incremental IS NOT NULL", (run["id"],)
        ).fetchall()
        value = advanced_checkpoint(order, old_value, [row[0] for row in maxima], source=run["source"])
    state = run["fetch_state"] or {}
    validators = {
        "etag": state.get("etag", old_etag),
        "last_modified": state.get("last_modified", old_modified),
        "file_hash": state.get("file_hash", old_hash),
    }
    if not _finished_cleanly(conn, run):
        validators = dict.fromkeys(validators)
    conn.execute(
        _SAVE_CHECKPOINT,
        {
            "source": run["source"],
            "value": stored_json(value),  # exact: a checkpoint may be an integer beyond 64 bits
            **validators,
            "run_id": run["id"],
        },
    )


def advanced_checkpoint(order: IncrementalOrder, stored: Any, maxima: list[Any], *, source: str) -> Any:
    """The checkpoint after a run, in its canonical stored form: the greatest of the stored
    one and the run's chunk maxima. It only moves forward. A stored checkpoint that cannot
    be read as the field's type is replaced; values that cannot be compared with one
    another (a number and a timestamp in a field without a declared type) leave it where it was."""
    greatest: Position | None = None
    try:
        greatest = None if stored is None else order.load(stored)
    except UncomparableValue as exc:
        log.warning("checkpoint_replaced", source=source, checkpoint=stored, kind=order.kind, error=str(exc))
    try:
        for chunk_max in maxima:
            position = order.load(chunk_max)
            if position is not None and (greatest is None or is_after(position, greatest)):
                greatest = position
    except UncomparableValue as exc:
        log.warning("checkpoint_kept", source=source, checkpoint=stored, kind=order.kind, error=str(exc))
        return stored
    return stored if greatest is None else order.stored(greatest)


def _finished_cleanly(conn: psycopg.Connection, run: dict[str, Any]) -> bool:
    """No fetch segment and no chunk of the run was delivered more than once (a crash, a retry)."""
    if run["fetch_attempts"] > run["fetch_segments"]:
        return False
    retried = conn.execute("SELECT 1 FROM raw_chunks WHERE run_id = %s AND attempts > 1 LIMIT 1", (run["id"],))
    return retried.fetchone() is None


def fail_run(conn: psycopg.Connection, run_id: int, error: str) -> bool:
    """Mark an active run failed with its reason; counts are those of committed chunks.

    The checkpoint is left untouched. Returns False when the run was already finished.
    """
    return end_active_run(conn, run_id, RunStatus.FAILED, error)
