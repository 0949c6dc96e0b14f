"""The reconciler re-drives lost work and finishes runs the queue forgot about."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.pipeline import get_run, records, source, wait_for_run
from workers.pipeline.finalize import finalize_run
from workers.pipeline.reconcile import reconcile_stalled

pytestmark = pytest.mark.usefixtures("worker")


def make_run(db: psycopg.Connection, config_path: Path, **config_keys: object) -> int:
    config = source("lost", "csv", str(config_path), **config_keys)
    row = db.execute(
        "INSERT INTO runs (source, trigger, config) VALUES ('lost', 'api', %s::jsonb) RETURNING id",
        (orjson.dumps(config.snapshot()).decode(),),
    ).fetchone()
    return int(row[0])


def test_a_queued_run_whose_message_was_lost_is_redriven(db: psycopg.Connection, tmp_path: Path) -> None:
    data = tmp_path / "lost.csv"
    data.write_text("id,name\n1,a\n2,b\n3,c\n")
    run_id = make_run(db, data)  # a run row with no message in any queue
    from workers.tasks import enqueue_chunk, fetch_source

    sent: list[int] = []

    def enqueue_fetch(rid: int) -> None:
        sent.append(rid)
        fetch_source.apply_async((rid,))

    kwargs = {"max_attempts": 5, "enqueue_fetch": enqueue_fetch, "enqueue_chunk": enqueue_chunk}
    assert reconcile_stalled(db, timeout_s=3600, **kwargs).fetches_redriven == []  # not stalled yet
    report = reconcile_stalled(db, timeout_s=0, **kwargs)
    assert report.fetches_redriven == [run_id] and sent == [run_id]
    run = wait_for_run(db, run_id)
    assert (run["status"], run["inserted"]) == (RunStatus.SUCCEEDED, 3)
    assert set(records(db, "lost")) == {"1", "2", "3"}


def test_a_lost_chunk_is_redriven_and_a_poison_chunk_fails_the_run(db: psycopg.Connection, tmp_path: Path) -> None:
    run_id = make_run(db, tmp_path / "unused.csv")
    items = [[2, {"id": "1", "name": "a"}, None, None], [3, {"id": "2", "name": "b"}, None, None]]
    db.execute(
        "UPDATE runs SET status = %s, chunks_total = 2, fetch_state = '{}' WHERE id = %s", (RunStatus.RUNNING, run_id)
    )
    for chunk_no in (0, 1):
        db.execute(
            "INSERT INTO raw_chunks (run_id, chunk_no, item_count, payload, attempts) VALUES (%s, %s, 1, %s, %s)",
            (run_id, chunk_no, orjson.dumps(items[chunk_no:chunk_no + 1]), 0 if chunk_no == 0 else 5),
        )
    from workers.tasks import enqueue_chunk

    report = reconcile_stalled(
        db, timeout_s=0, max_attempts=5, enqueue_fetch=lambda _r: None, enqueue_chunk=enqueue_chunk
    )
    assert report.chunks_redriven == [(run_id, 0)]
    assert report.runs_failed == [run_id]  # chunk 1 already used its 5 attempts
    run = get_run(db, run_id)
    assert run["status"] == RunStatus.FAILED and "chunk 1 failed after 5 attempts" in run["error"]


def test_finalize_is_idempotent(db: psycopg.Connection, tmp_path: Path) -> None:
    run_id = make_run(db, tmp_path / "unused.csv", incremental_field="id")
    db.execute(
        "UPDATE runs SET status = %s, chunks_total = 1, fetch_state = '{}' WHERE id = %s", (RunStatus.RUNNING, run_id)
    )
    db.execute(
        "INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected, max_incremental)"
        " VALUES (%s, 0, 4, 3, 0, 0, 1, '7')",
        (run_id,),
    )
    assert finalize_run(db, run_id) == RunStatus.PARTIAL
    first = get_run(db, run_id)
    assert finalize_run(db, run_id) is None  # second call: nothing changes
    assert get_run(db, run_id) == first
    assert (first["fetched"], first["inserted"], first["rejected"]) == (4, 3, 1)
    assert db.execute("SELECT value FROM checkpoints WHERE source = 'lost'").fetchone()[0] == 7


def test_the_work_of_a_dead_worker_process_is_redriven_without_waiting_for_the_timeout(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    """A fetch lease and a chunk delivery name their worker process (workers/liveness.py):
    once its heartbeat is DEAD_AFTER_S old, the reconciler re-drives them at once, however
    long TASK_TIMEOUT_S is; what a live process holds is left alone."""
    import uuid

    from workers.liveness import DEAD_AFTER_S

    alive, dead = uuid.uuid4(), uuid.uuid4()
    db.execute("INSERT INTO worker_processes (id, hostname, pid) VALUES (%s, 'h', 1)", (alive,))
    db.execute(
        "INSERT INTO worker_processes (id, hostname, pid, beat_at)"
        " VALUES (%s, 'h', 2, now() - make_interval(secs => %s))",
        (dead, DEAD_AFTER_S + 1),
    )
    fetching: dict[uuid.UUID, int] = {}
    for holder in (alive, dead):  # mid-fetch, with a chunk delivered to the same process
        config = source(f"src-{holder}", "csv", str(tmp_path / "unused.csv"))
        run_id = db.execute(
            "INSERT INTO runs (source, trigger, config, status, heartbeat_at, fetch_lease, fetch_holder)"
            " VALUES (%s, 'api', %s::jsonb, %s, now(), gen_random_uuid(), %s) RETURNING id",
            (config.name, orjson.dumps(config.snapshot()).decode(), RunStatus.RUNNING, holder),
        ).fetchone()[0]
        fetching[holder] = run_id
        db.execute(
            "INSERT INTO raw_chunks (run_id, chunk_no, item_count, payload, attempts, claimed_by, enqueued_at)"
            " VALUES (%s, 0, 1, %s, 1, %s, now() - make_interval(secs => %s))",
            (run_id, orjson.dumps([[2, {"id": "1"}, None, None]]), holder, DEAD_AFTER_S + 1),
        )
    db.commit()
    sent_fetches: list[int] = []
    sent_chunks: list[tuple[int, int]] = []
    report = reconcile_stalled(db, timeout_s=3600, max_attempts=5, enqueue_fetch=sent_fetches.append,
                               enqueue_chunk=lambda run, chunk: sent_chunks.append((run, chunk)))
    assert sent_fetches == report.fetches_redriven == [fetching[dead]]
    assert sent_chunks == report.chunks_redriven == [(fetching[dead], 0)]
    freed = get_run(db, fetching[dead])
    assert freed["fetch_lease"] is None and freed["fetch_holder"] is None  # the re-driven task takes it
    assert get_run(db, fetching[alive])["fetch_lease"] is not None
    # Once re-driven, the chunk waits for its new delivery: the next pass sends nothing more.
    again = reconcile_stalled(db, timeout_s=3600, max_attempts=5, enqueue_fetch=sent_fetches.append,
                              enqueue_chunk=lambda run, chunk: sent_chunks.append((run, chunk)))
    assert again.fetches_redriven == [] and again.chunks_redriven == []
    # A pass leaves no transaction open: beat sends it every few seconds to a worker whose
    # connection (not in autocommit, as in workers/db.py) would otherwise hold locks that
    # TRUNCATE and migrations wait on forever.
    with psycopg.connect(db.info.dsn) as worker_conn:
        reconcile_stalled(worker_conn, timeout_s=3600, max_attempts=5, enqueue_fetch=sent_fetches.append,
                          enqueue_chunk=lambda run, chunk: sent_chunks.append((run, chunk)))
        assert worker_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
