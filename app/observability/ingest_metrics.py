"""Ingestion metrics for GET /metrics, read from PostgreSQL and the broker at scrape time.

Nothing is counted in worker memory: any number of worker processes (and API processes)
report the same numbers, because every number comes from the database (runs, ledger,
maintained counters) or from the broker (queue lengths). The async queries run in the
/metrics route (`read_snapshot`); `IngestCollector` renders the snapshot into a
prometheus_client registry. Every query is an aggregate over `runs`, `source_stats`,
`drift_events` or a bounded slice of `chunk_ledger`, never over `records`.

| metric | type | labels | source of truth |
|---|---|---|---|
| ingest_records_total | counter | source, outcome | finished runs' counts + active runs' ledger |
| ingest_run_duration_seconds | histogram | source | finished_at - started_at of finished runs |
| ingest_chunk_duration_seconds | histogram | source | chunk_ledger.duration_ms, runs of the last 24 h |
| ingest_last_success_timestamp_seconds | gauge | source | newest finished_at of a succeeded/partial run |
| ingest_runs | gauge | status | runs per status |
| ingest_records_stored | gauge | source | source_stats.records |
| ingest_rejected_records | gauge | | sum of source_stats.rejected |
| ingest_drift_events | gauge | | rows of drift_events |
| ingest_queue_depth | gauge | queue | broker queue lengths (app/observability/queue_depth.py) |
| ingest_scrape_error | gauge | | 1 when the database or the broker could not be read |
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.run_status import ACTIVE, ALL, FINISHED, RunStatus
from app.db.queries import stats_snapshot
from app.observability.queue_depth import queue_depths

log = structlog.get_logger("app.observability.ingest_metrics")

OUTCOMES = ("inserted", "updated", "unchanged", "rejected")
# Upper bounds (seconds), fixed so that every scrape and every API process agree.
RUN_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The chunk histogram covers the chunks of runs created in this window, so a scrape
# reads a bounded slice of the ledger (an index range on its primary key).
CHUNK_WINDOW = "24 hours"
SCRAPE_TIMEOUT_S = 5.0

# Finished runs carry their final counts; active runs' committed chunks are in the ledger.
# finalize/fail copy the ledger sums into the run in the same transaction that ends it,
# and one statement reads one snapshot, so a run moving to finished never counts twice.
_RECORDS_SQL = """
SELECT source, sum(inserted) AS inserted, sum(updated) AS updated,
       sum(unchanged) AS unchanged, sum(rejected) AS rejected
FROM (
    SELECT source, inserted, updated, unchanged, rejected
    FROM runs WHERE status = ANY(:finished)
    UNION ALL
    SELECT r.source, l.inserted, l.updated, l.unchanged, l.rejected
    FROM runs r JOIN chunk_ledger l ON l.run_id = r.id
    WHERE r.status = ANY(:active)
) AS counted
GROUP BY source
"""


def _cumulative_filters(column: str, bounds: Iterable[float], scale: float = 1.0) -> str:
    # Bounds are module constants (no input reaches this SQL); `<=` is Prometheus' `le`.
    return ", ".join(
        f"count(*) FILTER (WHERE {column} <= {bound * scale!r}) AS le_{i}" for i, bound in enumerate(bounds)
    )


_RUNS_SQL = f"""
SELECT source,
       count(*) FILTER (WHERE d IS NOT NULL) AS n,
       coalesce(sum(d), 0) AS total,
       extract(epoch FROM max(finished_at) FILTER (WHERE status <> :failed_status)) AS last_success,
       {_cumulative_filters("d", RUN_BUCKETS)}
FROM (
    SELECT source, status, finished_at, extract(epoch FROM finished_at - started_at)::float8 AS d
    FROM runs WHERE status = ANY(:finished) AND finished_at IS NOT NULL
) AS finished
GROUP BY source
"""

# The newest run created before the window (ids grow with created_at): walks the primary
# key backwards over the window's runs only. Its id, passed as a value, lets the planner
# read the ledger by a range of its primary key.
_CHUNK_WINDOW_SQL = f"""
SELECT id FROM runs WHERE created_at < now() - interval '{CHUNK_WINDOW}' ORDER BY id DESC LIMIT 1
"""

_CHUNKS_SQL = f"""
SELECT r.source, count(*) AS n, coalesce(sum(l.duration_ms), 0) / 1000.0 AS total,
       {_cumulative_filters("l.duration_ms", CHUNK_BUCKETS, 1000.0)}
FROM chunk_ledger l JOIN runs r ON r.id = l.run_id
WHERE l.run_id > :after_run AND l.duration_ms IS NOT NULL
GROUP BY r.source
"""


@dataclass(frozen=True)
class Histogram:
    cumulative: tuple[int, ...]  # observations <= each bound, in bound order
    count: int
    total: float


@dataclass
class IngestSnapshot:
    """Everything one scrape read; `database_ok` False leaves the database parts empty."""

    database_ok: bool = False
    records: dict[str, dict[str, int]] = field(default_factory=dict)
    run_durations: dict[str, Histogram] = field(default_factory=dict)
    chunk_durations: dict[str, Histogram] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    drift_events: int = 0
    queues: dict[str, int | None] = field(default_factory=dict)

    @property
    def broker_ok(self) -> bool:
        return any(depth is not None for depth in self.queues.values())


def _histograms(rows: Iterable[object], bounds: tuple[float, ...]) -> dict[str, Histogram]:
    result = {}
    for row in rows:
        mapping = row._mapping  # type: ignore[attr-defined]
        result[mapping["source"]] = Histogram(
            cumulative=tuple(int(mapping[f"le_{i}"]) for i in range(len(bounds))),
            count=int(mapping["n"]),
            total=float(mapping["total"]),
        )
    return result


async def _read_database(session: AsyncSession, snapshot: IngestSnapshot) -> None:
    # One read-only snapshot for every query, so the numbers of one scrape agree.
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
    statuses = {"finished": list(FINISHED), "active": list(ACTIVE), "failed_status": RunStatus.FAILED.value}
    for row in await session.execute(text(_RECORDS_SQL), statuses):
        snapshot.records[row.source] = {outcome: int(getattr(row, outcome)) for outcome in OUTCOMES}
    rows = (await session.execute(text(_RUNS_SQL), statuses)).all()
    snapshot.run_durations = {k: v for k, v in _histograms(rows, RUN_BUCKETS).items() if v.count}
    snapshot.last_success = {row.source: float(row.last_success) for row in rows if row.last_success is not None}
    after_run = (await session.execute(text(_CHUNK_WINDOW_SQL))).scalar_one_or_none() or 0
    chunk_rows = (await session.execute(text(_CHUNKS_SQL), {"after_run": int(after_run)})).all()
    snapshot.chunk_durations = _histograms(chunk_rows, CHUNK_BUCKETS)
    records, runs, snapshot.rejected, snapshot.drift_events = await stats_snapshot(
        await session.connection(), configured=[]
    )
    snapshot.stored, snapshot.runs = records["by_source"], runs["by_status"]


async def read_snapshot(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    broker_url: str,
    broker_redis: Redis | None,
    queues: tuple[str, ...],
) -> IngestSnapshot:
    """Read every ingestion number; never raises (a failure shows as ingest_scrape_error)."""
    depths = asyncio.ensure_future(queue_depths(broker_url=broker_url, broker_redis=broker_redis, queues=queues))
    snapshot = IngestSnapshot()
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S), sessionmaker() as session:
            await _read_database(session, snapshot)
        snapshot.database_ok = True
    except Exception as exc:  # database down, timeout, pool exhausted: report, do not fail the scrape
        log.warning("ingest_metrics_unavailable", error=f"{type(exc).__name__}: {exc}"[:500])
        snapshot = IngestSnapshot()  # drop whatever was read before the failure
    finally:
        queues_read = await depths
    snapshot.queues = queues_read
    return snapshot


class IngestCollector(Collector):
    """Renders one IngestSnapshot (a fresh collector per scrape)."""

    def __init__(self, snapshot: IngestSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield GaugeMetricFamily(
            "ingest_scrape_error",
            "1 when this scrape could not read the database or the broker (their metrics are then missing)",
            value=0 if snap.database_ok and snap.broker_ok else 1,
        )
        queue_depth = GaugeMetricFamily(
            "ingest_queue_depth",
            "Messages waiting in each broker queue (taken but unacknowledged ones excluded)",
            labels=["queue"],
        )
        for queue, depth in snap.queues.items():
            if depth is not None:
                queue_depth.add_metric([queue], depth)
        yield queue_depth
        if not snap.database_ok:
            return

        records = CounterMetricFamily(
            "ingest_records",
            "Records processed, by source and outcome (finished runs and committed chunks)",
            labels=["source", "outcome"],
        )
        for source, counts in sorted(snap.records.items()):
            for outcome in OUTCOMES:
                records.add_metric([source, outcome], counts[outcome])
        yield records
        yield _histogram_family(
            "ingest_run_duration_seconds",
            "Duration of finished runs (started to finished), by source",
            RUN_BUCKETS,
            snap.run_durations,
        )
        yield _histogram_family(
            "ingest_chunk_duration_seconds",
            f"Time to normalize and upsert one chunk, chunks of runs created in the last {CHUNK_WINDOW} "
            "(a sliding window: read the buckets as a distribution, not with rate())",
            CHUNK_BUCKETS,
            snap.chunk_durations,
        )
        last_success = GaugeMetricFamily(
            "ingest_last_success_timestamp_seconds",
            "Unix time the newest succeeded or partial run of each source finished",
            labels=["source"],
        )
        for source, stamp in sorted(snap.last_success.items()):
            last_success.add_metric([source], stamp)
        yield last_success
        runs = GaugeMetricFamily("ingest_runs", "Runs by status", labels=["status"])
        for status in ALL:
            runs.add_metric([status], snap.runs.get(status, 0))
        yield runs
        stored = GaugeMetricFamily("ingest_records_stored", "Records stored, by source", labels=["source"])
        for source, count in sorted(snap.stored.items()):
            stored.add_metric([source], count)
        yield stored
        yield GaugeMetricFamily("ingest_rejected_records", "Rejected records kept for review", value=snap.rejected)
        yield GaugeMetricFamily("ingest_drift_events", "Schema drift events recorded", value=snap.drift_events)


def _histogram_family(
    name: str, documentation: str, bounds: tuple[float, ...], data: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["source"])
    for source, hist in sorted(data.items()):
        buckets = [(floatToGoString(b), float(n)) for b, n in zip(bounds, hist.cumulative, strict=True)]
        family.add_metric([source], [*buckets, ("+Inf", float(hist.count))], sum_value=hist.total)
    return family


class RegistryView(Collector):
    """Re-exposes another registry's metrics (the HTTP metrics) in a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()
