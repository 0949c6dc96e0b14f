"""Redis delivers at least once, sometimes twice: a task that runs again changes nothing.

The duplicates travel through the real broker to real workers, exactly as a redelivery
after a lost ack or an expired visibility timeout would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from app.core.run_status import RunStatus
from tests.support.faults import (
    ProcessSet,
    assert_counts,
    assert_exact_records,
    deliveries,
    queue_depth,
    scalar,
    wait_until,
    write_csv,
)
from tests.support.pipeline import ingest, source, start_run, wait_for_run


def snapshot(conn: psycopg.Connection, run_id: int, source_name: str) -> dict[str, Any]:
    """Everything a replayed task could touch, updated_at included."""
    with conn.cursor(row_factory=dict_row) as cur:
        return {
            "run": cur.execute("SELECT * FROM runs WHERE id = %s", (run_id,)).fetchone(),
            "records": cur.execute(
                "SELECT * FROM records WHERE source = %s ORDER BY external_id", (source_name,)
            ).fetchall(),
            "stats": cur.execute("SELECT * FROM source_stats WHERE source = %s", (source_name,)).fetchone(),
            "ledger": cur.execute(
                "SELECT * FROM chunk_ledger WHERE run_id = %s ORDER BY chunk_no", (run_id,)
            ).fetchall(),
            "rejects": cur.execute("SELECT count(*) AS n FROM rejected_records").fetchone(),
            "checkpoint": cur.execute("SELECT * FROM checkpoints WHERE source = %s", (source_name,)).fetchone(),
        }


@pytest.mark.timeout(180)
def test_replaying_every_task_of_a_finished_run_changes_nothing(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    from workers.tasks import fetch_source, normalize_and_upsert

    upstream = write_csv(tmp_path / "replay.csv", 10_000)
    worker = procs.worker("w", concurrency=2)
    procs.beat()
    config = source("replay", "csv", str(tmp_path / "replay.csv"), chunk_size=1000, fields={"title": "title"})
    run = ingest(db, config)
    assert run["status"] == RunStatus.SUCCEEDED and run["chunks_total"] == 10
    before = snapshot(db, run["id"], "replay")
    _, attempts_before = deliveries(db, run["id"])

    def chunk_tasks_done() -> int:
        return worker.log_text().count("Task workers.tasks.normalize_and_upsert[")

    done_before = chunk_tasks_done()

    for _ in range(2):
        fetch_source.apply_async((run["id"],))
        for chunk_no in range(run["chunks_total"]):
            normalize_and_upsert.apply_async((run["id"], chunk_no))

    # The worker logs every finished task; then the queues drain.
    wait_until(lambda: chunk_tasks_done() >= done_before + 20, 60, "all 20 chunk replays delivered")
    wait_until(lambda: queue_depth(procs.env["REDIS_URL"]) == 0, 60, "the broker queues to drain")

    after = snapshot(db, run["id"], "replay")
    assert after == before
    # A copy of a committed chunk is not an attempt: it cannot push a run towards "poison".
    assert deliveries(db, run["id"])[1] == attempts_before
    assert_counts(after["run"], len(upstream), inserted=len(upstream))
    assert_exact_records(db, "replay", upstream)


@pytest.mark.timeout(180)
def test_duplicates_while_the_run_is_active_are_absorbed(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    from workers.tasks import fetch_source, normalize_and_upsert

    n = 20_000
    upstream = write_csv(tmp_path / "dup.csv", n)
    procs.worker("w", concurrency=2)
    procs.beat()
    config = source("dup", "csv", str(tmp_path / "dup.csv"), chunk_size=1000, fields={"title": "title"})

    run_id = start_run(db, config)
    fetch_source.apply_async((run_id,))  # a second fetch of the same run, racing the first
    duplicated: set[int] = set()

    def every_chunk_sent_twice() -> bool:
        stored = [r[0] for r in db.execute("SELECT chunk_no FROM raw_chunks WHERE run_id = %s", (run_id,))]
        for chunk_no in stored:
            if chunk_no not in duplicated:
                normalize_and_upsert.apply_async((run_id, chunk_no))
                duplicated.add(chunk_no)
        return len(duplicated) == n // 1000

    wait_until(every_chunk_sent_twice, 60, "every chunk to be stored (and duplicated)", interval_s=0.05)
    run = wait_for_run(db, run_id, timeout_s=90)

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, n, inserted=n)
    assert_exact_records(db, "dup", upstream)
    assert scalar(db, "SELECT records FROM source_stats WHERE source = 'dup'") == n
