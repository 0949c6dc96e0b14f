"""A chunk that fails on every attempt fails its run, visibly and in bounded time, and
does not hold up another source ingested at the same moment.

The fault is real: a trigger in PostgreSQL that raises for one record, so the chunk's
transaction aborts on every delivery, exactly as a constraint or a bad value would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.faults import (
    RECONCILE_EVERY_S,
    TASK_TIMEOUT_S,
    ProcessSet,
    assert_counts,
    assert_exact_records,
    ledger_totals,
    scalar,
    write_csv,
)
from tests.support.pipeline import ingest, source, start_run, wait_for_run

POISON_ID = "2345"
MAX_ATTEMPTS = 5  # settings.max_task_attempts (default)
# Retries back off 1, 2, 4, 8, 16 s (workers/tasks.py _backoff_s); the reconciler fails a
# chunk that used its attempts once it has been stalled for TASK_TIMEOUT_S.
FAIL_BOUND_S = sum(min(60, 2**k) for k in range(MAX_ATTEMPTS)) + TASK_TIMEOUT_S + RECONCILE_EVERY_S + 20


@pytest.fixture
def poison_trigger(db: psycopg.Connection) -> Iterator[str]:
    db.execute(
        """
        CREATE FUNCTION reliability_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.source = 'poisoned' AND NEW.external_id = '""" + POISON_ID + """' THEN
                RAISE EXCEPTION 'injected fault: record % is poison', NEW.external_id;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    db.execute(
        "CREATE TRIGGER reliability_poison BEFORE INSERT OR UPDATE ON records"
        " FOR EACH ROW EXECUTE FUNCTION reliability_poison()"
    )
    try:
        yield POISON_ID
    finally:
        drop_trigger(db)


def drop_trigger(conn: psycopg.Connection) -> None:
    conn.execute("DROP TRIGGER IF EXISTS reliability_poison ON records")
    conn.execute("DROP FUNCTION IF EXISTS reliability_poison()")


@pytest.mark.timeout(240)
def test_a_poison_chunk_fails_its_run_and_another_source_still_succeeds(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path, poison_trigger: str
) -> None:
    poisoned_rows = write_csv(tmp_path / "poisoned.csv", 5000)
    healthy_rows = write_csv(tmp_path / "healthy.csv", 5000)
    procs.worker("w", concurrency=2)
    procs.beat()
    poisoned = source("poisoned", "csv", str(tmp_path / "poisoned.csv"), chunk_size=500, fields={"title": "title"})
    healthy = source("healthy", "csv", str(tmp_path / "healthy.csv"), chunk_size=500, fields={"title": "title"})

    started = time.monotonic()
    bad_id = start_run(db, poisoned)
    good_id = start_run(db, healthy)
    good = wait_for_run(db, good_id, timeout_s=60)
    bad = wait_for_run(db, bad_id, timeout_s=FAIL_BOUND_S)
    failed_after = time.monotonic() - started

    assert good["status"] == RunStatus.SUCCEEDED, good["error"]
    assert_counts(good, 5000, inserted=5000)
    assert_exact_records(db, "healthy", healthy_rows)

    poison_chunk = (int(poison_trigger) - 1) // 500  # row n is item n-1
    assert bad["status"] == RunStatus.FAILED
    assert f"chunk {poison_chunk} failed after {MAX_ATTEMPTS} attempts" in bad["error"], bad["error"]
    assert f"record {poison_trigger} is poison" in bad["error"], bad["error"]
    assert failed_after <= FAIL_BOUND_S
    attempts = scalar(db, "SELECT attempts FROM raw_chunks WHERE run_id = %s AND chunk_no = %s", (bad_id, poison_chunk))
    assert MAX_ATTEMPTS <= attempts <= MAX_ATTEMPTS + 1  # bounded: no poison loop
    # Nothing half-written: the run's counts are exactly its committed chunks, and the table
    # holds exactly their records (the poison chunk's transaction left no trace).
    totals = ledger_totals(db, bad_id)
    assert totals["chunks"] == 9
    assert {k: bad[k] for k in ("fetched", "inserted", "updated", "unchanged", "rejected")} == {
        k: totals[k] for k in ("fetched", "inserted", "updated", "unchanged", "rejected")
    }
    assert_counts(bad, 4500, inserted=4500)
    lost_chunk = {str(i) for i in range(poison_chunk * 500 + 1, poison_chunk * 500 + 501)}
    assert_exact_records(db, "poisoned", poisoned_rows - lost_chunk)
    assert scalar(db, "SELECT value FROM checkpoints WHERE source = 'poisoned'") is None

    # The fault repaired, the next run completes the data: every record exactly once.
    drop_trigger(db)
    rerun = ingest(db, poisoned, timeout_s=60)
    assert rerun["status"] == RunStatus.SUCCEEDED, rerun["error"]
    assert_counts(rerun, 5000, inserted=500, unchanged=4500)
    assert_exact_records(db, "poisoned", poisoned_rows)
    print(f"poison run failed after {failed_after:.1f}s (bound {FAIL_BOUND_S}s), attempts={attempts}")
