"""GET /stats: maintained counts (never a recount of records), runs by status, queue depth."""

from __future__ import annotations

import asyncio
from typing import Any

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


@router.get(
    "/stats", response_model=Stats, summary="Counts and queue depth", responses=error_responses(*COMMON_ERRORS, 503)
)
async def stats(request: Request, db: ReadConnectionDep, settings: SettingsDep, sources: SourcesDep) -> dict[str, Any]:
    """Records per source, runs per status and last run per source, queue depths, rejects, drift."""
    depths = asyncio.ensure_future(
        queue_depths(
            broker_url=settings.celery_broker_url or settings.redis_url,
            broker_redis=request.app.state.broker_redis,
            queues=QUEUES,
        )
    )
    try:
        by_source, rejected = await record_stats(db)
        by_status = await runs_by_status(db)
        last = await last_runs(db, sources=list(dict.fromkeys([*sources, *by_source])))
        drift = await drift_event_count(db)
    finally:
        queues = await depths
    return {
        "records": {"total": sum(by_source.values()), "by_source": by_source},
        "runs": {"total": sum(by_status.values()), "by_status": by_status, "last_by_source": last},
        "queues": queues,
        "rejected": rejected,
        "drift_events": drift,
    }
