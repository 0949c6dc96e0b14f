"""Workers die mid-run (SIGKILL: no cleanup, no ack): nothing is lost, nothing duplicated.

A killed pool child's task is redelivered at once (acks_late + reject_on_worker_lost);
a killed worker's unacknowledged tasks are re-driven by the reconciler (beat) once they
have been stalled for TASK_TIMEOUT_S. Either way the ledger makes the replay harmless.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.faults import (
    RECOVERY_BOUND_S,
    ProcessSet,
    SlowPages,
    assert_counts,
    assert_exact_records,
    deliveries,
    post,
    scalar,
    wait_until,
    write_csv,
)
from tests.support.http_server import LocalHTTPServer
from tests.support.pipeline import FINISHED, get_run, source, start_run, wait_for_run


@pytest.mark.timeout(240)
def test_killing_pool_children_mid_run_loses_and_duplicates_nothing(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    n = 50_000
    upstream = write_csv(tmp_path / "big.csv", n)
    worker = procs.worker("w", concurrency=2)
    procs.beat()
    config = source("big", "csv", str(tmp_path / "big.csv"), chunk_size=2000, fields={"title": "title"})

    run_id = start_run(db, config)
    # Kill every pool child at a moment a chunk is in flight (delivered, not committed), so
    # the kill is sure to hit work. Two rounds at most: a chunk is then delivered at most 3
    # times, within the 5 deliveries settings.max_task_attempts allows, so a failed run here
    # would be a real bug.
    in_flight = (
        "SELECT count(*) FROM raw_chunks c WHERE c.run_id = %s AND c.attempts > 0 AND NOT EXISTS"
        " (SELECT 1 FROM chunk_ledger l WHERE l.run_id = c.run_id AND l.chunk_no = c.chunk_no)"
    )
    killed: list[int] = []
    rounds = 0
    while rounds < 2 and get_run(db, run_id)["status"] not in FINISHED:
        if scalar(db, in_flight, (run_id,)) == 0:
            time.sleep(0.01)
            continue
        for child in worker.pool_children():
            try:
                os.kill(child, signal.SIGKILL)
                killed.append(child)
            except ProcessLookupError:
                pass
        rounds += 1
        wait_until(lambda: len(worker.pool_children()) == 2, 30, "the pool to replace its killed children")
    run = wait_for_run(db, run_id, timeout_s=RECOVERY_BOUND_S)

    assert killed, "the run finished before any pool child could be killed"
    fetch_attempts, chunk_deliveries = deliveries(db, run_id)
    assert fetch_attempts > 1 or chunk_deliveries > run["chunks_total"], (
        f"no kill hit a task in flight (killed {killed}); the test proved nothing"
    )
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, n, inserted=n)
    assert_exact_records(db, "big", upstream)
    assert scalar(db, "SELECT records FROM source_stats WHERE source = 'big'") == n
    assert worker.running
    wait_until(lambda: len(worker.pool_children()) == 2, 30, "the pool to replace its killed children")


@pytest.mark.timeout(240)
def test_killing_the_whole_worker_mid_fetch_recovers_within_the_bound(
    db: psycopg.Connection, procs: ProcessSet, http: LocalHTTPServer
) -> None:
    upstream = [post(i) for i in range(1, 5001)]
    pages = SlowPages(upstream, delay_s=0.3)  # 20 pages of 250: about 6 s of fetching
    http.route("/slow", pages)
    first = procs.worker("first", concurrency=2)
    procs.beat()
    config = source("slow", "http_json", f"{http.url}/slow", records_path="data", pagination="page",
                    page_size=250, chunk_size=500, fields={"title": "title", "content": "body"})

    run_id = start_run(db, config)
    wait_until(
        lambda: scalar(db, "SELECT count(*) FROM raw_chunks WHERE run_id = %s", (run_id,)) >= 3,
        60, "the fetch to store its third chunk",
    )
    assert get_run(db, run_id)["chunks_total"] is None, "the fetch finished before the kill"
    first.kill()  # SIGKILL to the process group: main process and every pool child, no ack, no cleanup
    killed_at = time.monotonic()

    procs.worker("second", concurrency=2)
    run = wait_for_run(db, run_id, timeout_s=RECOVERY_BOUND_S)
    recovered_in = time.monotonic() - killed_at

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert recovered_in <= RECOVERY_BOUND_S
    assert run["fetch_attempts"] >= 2  # the reconciler re-drove the fetch the dead worker held
    assert_counts(run, len(upstream), inserted=len(upstream))
    assert_exact_records(db, "slow", {str(r["id"]) for r in upstream})
    print(f"recovered {recovered_in:.1f}s after the kill (bound {RECOVERY_BOUND_S}s)")


@pytest.mark.scenario
@pytest.mark.timeout(300)
def test_a_dead_workers_fetch_and_chunks_are_redriven_by_its_silence_not_the_timeout(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    """TASK_TIMEOUT_S is an hour here, so neither the reconciler's age rule nor Redis's
    visibility timeout can bring the dead worker's work back within the test: only its
    stopped heartbeat (workers/liveness.py) can."""
    path = tmp_path / "rows.csv"
    upstream = write_csv(path, 200_000)
    hour = {"TASK_TIMEOUT_S": "3600", "FETCH_SEGMENT_CHUNKS": "4"}
    first = procs.worker("first", concurrency=2, **hour)
    procs.beat(**hour)
    config = source("silent", "csv", str(path), chunk_size=1000, fields={"title": "title", "content": "body"})

    run_id = start_run(db, config)
    wait_until(lambda: get_run(db, run_id)["fetch_segments"] >= 2, 120, "two fetch segments to commit")
    assert get_run(db, run_id)["chunks_total"] is None, "the fetch finished before the kill"
    first.kill()

    procs.worker("second", concurrency=2, **hour)
    run = wait_for_run(db, run_id, timeout_s=200)
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, len(upstream), inserted=len(upstream))
    assert_exact_records(db, "silent", upstream)
