"""GET /metrics: ingestion metrics read from PostgreSQL and Redis at scrape time.

The real app (httpx ASGI transport) is scraped before and after real ingestions through
the session's Celery worker; every metric must move by exactly what the runs did.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import anyio
import httpx
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.core.enqueue import producer
from app.core.run_status import RunStatus
from app.observability.ingest_metrics import CHUNK_BUCKETS, RUN_BUCKETS
from app.observability.queue_depth import redis_list_names
from tests.api.conftest import ClientFactory, insert_run
from tests.support.pipeline import ingest, source

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when it is absent (a source or series not seen yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_duration_s(db: psycopg.Connection, run_id: int) -> float:
    return float(
        db.execute("SELECT extract(epoch FROM finished_at - started_at) FROM runs WHERE id = %s", (run_id,)).fetchone()[
            0
        ]
    )


def assert_histogram_observed(
    before: Samples, after: Samples, name: str, bounds: tuple[float, ...], durations: list[float], src: str
) -> None:
    """Each bucket grew by the number of new observations <= its bound; _sum by their total."""
    for bound in bounds:
        expected = sum(1 for d in durations if d <= bound)
        assert delta(before, after, f"{name}_bucket", le=str(float(bound)), source=src) == expected, bound
    assert delta(before, after, f"{name}_bucket", le="+Inf", source=src) == len(durations)
    assert delta(before, after, f"{name}_count", source=src) == len(durations)
    assert math.isclose(delta(before, after, f"{name}_sum", source=src), sum(durations), abs_tol=1e-3)


async def test_ingestions_move_every_metric_by_exact_amounts(
    db: psycopg.Connection, worker: object, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    src = "metrics_csv"
    rows = [{"id": str(i), "name": f"item {i}", "score": str(i * 10)} for i in range(1, 26)]
    path = tmp_path / "items.csv"
    write_csv(path, rows)
    config = source(src, "csv", str(path), chunk_size=10, types={"score": "int"})

    # Run 1: 25 new records in 3 chunks.
    before = await scrape(client)
    run = await anyio.to_thread.run_sync(ingest, db, config)
    after = await scrape(client)
    assert (run["status"], run["inserted"], run["chunks_total"]) == (RunStatus.SUCCEEDED, 25, 3)

    assert value(after, "ingest_scrape_error") == 0
    assert delta(before, after, "ingest_records_total", source=src, outcome="inserted") == 25
    for outcome in ("updated", "unchanged", "rejected"):
        assert delta(before, after, "ingest_records_total", source=src, outcome=outcome) == 0
    assert delta(before, after, "ingest_runs", status=RunStatus.SUCCEEDED) == 1
    for status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PARTIAL, RunStatus.FAILED):
        assert delta(before, after, "ingest_runs", status=status) == 0
    assert value(after, "ingest_records_stored", source=src) == 25
    assert delta(before, after, "ingest_rejected_records") == 0
    assert delta(before, after, "ingest_drift_events") == 0
    assert_histogram_observed(
        before, after, "ingest_run_duration_seconds", RUN_BUCKETS, [run_duration_s(db, run["id"])], src
    )
    chunk_ms = [r[0] for r in db.execute("SELECT duration_ms FROM chunk_ledger WHERE run_id = %s", (run["id"],))]
    assert len(chunk_ms) == 3 and all(ms is not None and ms >= 0 for ms in chunk_ms), chunk_ms
    assert_histogram_observed(
        before, after, "ingest_chunk_duration_seconds", CHUNK_BUCKETS, [ms / 1000 for ms in chunk_ms], src
    )
    finished = db.execute("SELECT extract(epoch FROM finished_at) FROM runs WHERE id = %s", (run["id"],)).fetchone()
    assert math.isclose(value(after, "ingest_last_success_timestamp_seconds", source=src), float(finished[0]))
    for queue in ("fetch", "normalize", "maintenance"):
        assert ("ingest_queue_depth", frozenset({("queue", queue)})) in after

    # Run 2: 3 rows edited, 2 bad rows (no id; a score that is not an int) -> partial.
    for row in rows[:3]:
        row["name"] += " (edited)"
    write_csv(path, [*rows, {"id": "", "name": "no id", "score": "1"}, {"id": "99", "name": "bad", "score": "x"}])
    before = after
    run = await anyio.to_thread.run_sync(ingest, db, config)
    after = await scrape(client)
    assert (run["status"], run["fetched"]) == (RunStatus.PARTIAL, 27)
    expected = {"inserted": 0, "updated": 3, "unchanged": 22, "rejected": 2}
    for outcome, n in expected.items():
        assert delta(before, after, "ingest_records_total", source=src, outcome=outcome) == n, outcome
    assert delta(before, after, "ingest_runs", status=RunStatus.PARTIAL) == 1
    assert delta(before, after, "ingest_runs", status=RunStatus.SUCCEEDED) == 0
    assert delta(before, after, "ingest_rejected_records") == 2
    assert value(after, "ingest_records_stored", source=src) == 25
    assert_histogram_observed(
        before, after, "ingest_run_duration_seconds", RUN_BUCKETS, [run_duration_s(db, run["id"])], src
    )
    # The 22 unchanged rows were left out at the fetch stage: the 5 others make one chunk.
    assert run["chunks_total"] == 1
    assert delta(before, after, "ingest_chunk_duration_seconds_count", source=src) == 1

    # Run 3: a new column: one drift event (field added), every good record updated.
    write_csv(path, [{**row, "colour": "red"} for row in rows])
    before = after
    run = await anyio.to_thread.run_sync(ingest, db, config)
    after = await scrape(client)
    assert (run["status"], run["updated"]) == (RunStatus.SUCCEEDED, 25)
    assert delta(before, after, "ingest_drift_events") == 1
    assert delta(before, after, "ingest_records_total", source=src, outcome="updated") == 25
    assert delta(before, after, "ingest_runs", status=RunStatus.SUCCEEDED) == 1


async def test_active_runs_count_from_the_ledger_and_finishing_never_double_counts(
    db: psycopg.Connection, client: httpx.AsyncClient
) -> None:
    run_id = insert_run(db, "ledgered", status=RunStatus.RUNNING, started_at="2026-01-01T00:00:00Z")
    db.execute(
        "INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected, duration_ms)"
        " VALUES (%s, 0, 10, 6, 2, 1, 1, 120), (%s, 1, 5, 5, 0, 0, 0, 30)",
        (run_id, run_id),
    )
    running = await scrape(client)
    counts = {"inserted": 11, "updated": 2, "unchanged": 1, "rejected": 1}
    for outcome, n in counts.items():
        assert value(running, "ingest_records_total", source="ledgered", outcome=outcome) == n
    assert value(running, "ingest_runs", status=RunStatus.RUNNING) == 1
    assert value(running, "ingest_chunk_duration_seconds_count", source="ledgered") == 2
    assert value(running, "ingest_chunk_duration_seconds_bucket", source="ledgered", le="0.1") == 1
    assert ("ingest_run_duration_seconds_count", frozenset({("source", "ledgered")})) not in running

    # finalize copies the ledger sums into the run: the counter must not move.
    db.execute(
        "UPDATE runs SET status = %s, finished_at = started_at + interval '90 seconds', fetched = 15,"
        " inserted = 11, updated = 2, unchanged = 1, rejected = 1 WHERE id = %s",
        (RunStatus.PARTIAL, run_id),
    )
    done = await scrape(client)
    for outcome, n in counts.items():
        assert value(done, "ingest_records_total", source="ledgered", outcome=outcome) == n
    running, partial = (value(done, "ingest_runs", status=status) for status in (RunStatus.RUNNING, RunStatus.PARTIAL))
    assert (running, partial) == (0, 1)
    assert value(done, "ingest_run_duration_seconds_count", source="ledgered") == 1
    assert value(done, "ingest_run_duration_seconds_sum", source="ledgered") == 90
    assert value(done, "ingest_run_duration_seconds_bucket", source="ledgered", le="60.0") == 0
    assert value(done, "ingest_run_duration_seconds_bucket", source="ledgered", le="120.0") == 1


async def test_queue_depth_counts_messages_waiting_in_redis(
    db: psycopg.Connection, client: httpx.AsyncClient, session_worker_stopped: object
) -> None:
    broker = redis.Redis.from_url(producer().conf.broker_url)
    with session_worker_stopped():  # type: ignore[operator]  # nobody consumes while we count
        before = await scrape(client)
        try:
            for i in range(3):
                producer().send_task("workers.tasks.fetch_source", args=[10**9 + i])
            for i in range(2):
                producer().send_task("workers.tasks.normalize_and_upsert", args=[10**9, i])
            after = await scrape(client)
        finally:  # no worker may ever see these messages
            for queue in ("fetch", "normalize"):
                broker.delete(*redis_list_names(queue))
        cleared = await scrape(client)
    assert delta(before, after, "ingest_queue_depth", queue="fetch") == 3
    assert delta(before, after, "ingest_queue_depth", queue="normalize") == 2
    assert delta(before, after, "ingest_queue_depth", queue="maintenance") == 0
    assert value(cleared, "ingest_queue_depth", queue="fetch") == 0
    assert value(after, "ingest_scrape_error") == 0


async def test_database_down_still_answers_with_http_metrics(make_client: ClientFactory) -> None:
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/nowhere", rate_limit="1000/minute")
    await client.get("/health")
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert value(samples, "ingest_scrape_error") == 1
    assert ("ingest_scrape_error", frozenset()) in samples
    assert any(name == "http_requests_total" and dict(labels).get("route") == "/health" for name, labels in samples)
    assert not any(name.startswith(("ingest_records", "ingest_runs")) for name, _ in samples)
    # Redis still answers, so queue depths are still there.
    assert ("ingest_queue_depth", frozenset({("queue", "fetch")})) in samples
