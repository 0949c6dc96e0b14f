"""GET /stats: maintained counts (never a recount of records), runs by status, queue depth."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sqlalchemy import text

from app.api.deps import ReadConnectionDep, SettingsDep, SourcesDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.runs import last_runs
from app.api.schemas import Stats
from app.db.session import Queryable
from app.queue_depth import queue_depths
from celeryconfig import QUEUES

router = APIRouter(tags=["operations"])

RUN_STATUSES = ("queued", "running", "succeeded", "partial", "failed")


async def record_stats(db: Queryable) -> tuple[dict[str, int], int]:
    """Records per source and rejected total, from the maintained source_stats table."""
    rows = (await db.execute(text("SELECT source, records, rejected FROM source_stats ORDER BY source"))).all()
    return {row.source: int(row.records) for row in rows}, sum(int(row.rejected) for row in rows)


async def runs_by_status(db: Queryable) -> dict[str, int]:
    """Run count per status (every status present, zero when none)."""
    rows = await db.execute(text("SELECT status, count(*) AS n FROM runs GROUP BY status"))
    counts = dict.fromkeys(RUN_STATUSES, 0)
    counts.update({row.status: int(row.n) for row in rows})
    return counts


async def drift_event_count(db: Queryable) -> int:
    """Number of schema drift events recorded."""
    return int((await db.execute(text("SELECT count(*) FROM drift_events"))).scalar_one())


# The counts /stats needs, in one round trip: per-source records (in source order) and
# rejects from the maintained source_stats, runs per status, drift events.
COUNTS_SQL = """
SELECT
  (SELECT coalesce(json_object_agg(source, records ORDER BY source), '{}') FROM source_stats) AS by_source,
  (SELECT coalesce(sum(rejected), 0)::bigint FROM source_stats) AS rejected,
  (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM runs GROUP BY status) AS s)
    AS by_status,
  (SELECT count(*) FROM drift_events) AS drift_events
"""


async def stats_counts(db: Queryable) -> tuple[dict[str, int], int, dict[str, int], int]:
    """Records per source, rejected total, runs per status (every status present), drift events."""
    row = (await db.execute(text(COUNTS_SQL))).one()
    by_source, by_status = (orjson.loads(v) if isinstance(v, str) else v for v in (row.by_source, row.by_status))
    return by_source, int(row.rejected), {**dict.fromkeys(RUN_STATUSES, 0), **by_status}, int(row.drift_events)


@router.get(
    "/stats", response_model=Stats, summary="Counts and queue depth", responses=error_responses(*COMMON_ERRORS, 503)
)
async def stats(request: Request, db: ReadConnectionDep, settings: SettingsDep, sources: SourcesDep) -> dict[str, Any]:
    """Records per source, runs per status and last run per source, queue depths, rejects, drift."""
    # The broker is read while the database answers.
    depths = asyncio.ensure_future(
        queue_depths(
            broker_url=settings.celery_broker_url or settings.redis_url,
            broker_redis=request.app.state.broker_redis,
            queues=QUEUES,
        )
    )
    try:
        by_source, rejected, by_status, drift = await stats_counts(db)
        last = await last_runs(db, sources=list(dict.fromkeys([*sources, *by_source])))
    finally:
        queues = await depths
    return {
        "records": {"total": sum(by_source.values()), "by_source": by_source},
        "runs": {"total": sum(by_status.values()), "by_status": by_status, "last_by_source": last},
        "queues": queues,
        "rejected": rejected,
        "drift_events": drift,
    }
