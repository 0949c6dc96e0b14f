"""Raw-chunk retention: chunks of runs finished before RAW_RETENTION_DAYS go, in batches;
chunks an active or recent run may still need, and rejected records' payloads, stay."""

from __future__ import annotations

import psycopg

from app.core.raw_format import INSERT_RAW_CHUNK, raw_chunk_params
from app.core.run_status import RunStatus
from workers.pipeline.retention import delete_expired_chunks


def run_with_chunks(db: psycopg.Connection, status: RunStatus, finished_days_ago: float | None, chunks: int) -> int:
    run_id = db.execute(
        "INSERT INTO runs (source, trigger, status, config, finished_at)"
        " VALUES ('s', 'api', %s, '{}', now() - make_interval(secs => %s)) RETURNING id",
        (status, None if finished_days_ago is None else finished_days_ago * 86_400),
    ).fetchone()[0]
    for chunk_no in range(chunks):
        rows = [[1, {"id": 1}, None, None]]
        db.execute(INSERT_RAW_CHUNK, raw_chunk_params(run_id=run_id, chunk_no=chunk_no, rows=rows))
    return run_id


def chunk_count(db: psycopg.Connection, run_id: int) -> int:
    return db.execute("SELECT count(*) FROM raw_chunks WHERE run_id = %s", (run_id,)).fetchone()[0]


def test_only_chunks_of_runs_finished_before_the_retention_go(db: psycopg.Connection) -> None:
    old_ok = run_with_chunks(db, RunStatus.SUCCEEDED, 10, chunks=45)
    old_failed = run_with_chunks(db, RunStatus.FAILED, 8, chunks=3)
    old_cancelled = run_with_chunks(db, RunStatus.CANCELLED, 8, chunks=2)
    recent = run_with_chunks(db, RunStatus.PARTIAL, 2, chunks=4)
    active = run_with_chunks(db, RunStatus.SUCCEEDED, None, chunks=5)
    db.execute("UPDATE runs SET status = %s, finished_at = NULL WHERE id = %s", (RunStatus.RUNNING, active))
    db.execute(
        "INSERT INTO rejected_records (run_id, source, chunk_no, reason, message, raw)"
        " VALUES (%s, 's', 0, 'missing_id', 'no id', '{\"x\": 1}')", (old_ok,),
    )

    report = delete_expired_chunks(db, retention_days=7, batch=10)

    assert report.chunks == 45 + 3 + 2 and report.runs == 3
    assert [chunk_count(db, run) for run in (old_ok, old_failed, old_cancelled)] == [0, 0, 0]
    assert chunk_count(db, recent) == 4 and chunk_count(db, active) == 5
    assert db.execute("SELECT raw FROM rejected_records").fetchone()[0] == {"x": 1}
    assert delete_expired_chunks(db, retention_days=7).chunks == 0  # idempotent


def test_a_call_deletes_at_most_its_budget(db: psycopg.Connection) -> None:
    run_id = run_with_chunks(db, RunStatus.SUCCEEDED, 30, chunks=25)
    assert delete_expired_chunks(db, retention_days=7, batch=10, max_chunks=20).chunks == 20
    assert chunk_count(db, run_id) == 5
    assert delete_expired_chunks(db, retention_days=7, batch=10, max_chunks=20).chunks == 5


def test_the_ids_a_fetch_kept_between_segments_go_once_its_run_ended(db: psycopg.Connection) -> None:
    """fetch_kept_ids serve only the next segment of an active fetch (fetch/segment.py)."""
    cancelled = run_with_chunks(db, RunStatus.CANCELLED, 0, chunks=1)  # ended a minute ago, mid-fetch
    active = run_with_chunks(db, RunStatus.SUCCEEDED, None, chunks=1)
    db.execute("UPDATE runs SET status = %s, finished_at = NULL WHERE id = %s", (RunStatus.RUNNING, active))
    for run_id in (cancelled, active):
        db.execute("INSERT INTO fetch_kept_ids (run_id, kept) VALUES (%s, 'x')", (run_id,))
    db.commit()

    delete_expired_chunks(db, retention_days=7)

    left = [run_id for (run_id,) in db.execute("SELECT run_id FROM fetch_kept_ids")]
    assert left == [active]
    assert chunk_count(db, cancelled) == 1, "its raw chunks stay for the retention"
