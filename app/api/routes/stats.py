"""GET /stats: maintained counts (never a recount of records), runs by status, queue depth."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import ReadConnectionDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import Stats
from app.db.queries import stats_snapshot
from app.observability.queue_depth import queue_depths
from celeryconfig import QUEUES

router = APIRouter(tags=["operations"])


@router.get(
    "/stats", response_model=Stats, summary="Counts and queue depth", responses=error_responses(*COMMON_ERRORS, 503)
)
async def stats(request: Request, db: ReadConnectionDep) -> Response:
    """Records per source, runs per status and last run per source, queue depths, rejects, drift."""
    state = request.app.state
    # The broker is read while the database answers.
    depths = asyncio.ensure_future(
        queue_depths(
            broker_url=state.settings.celery_broker_url,
            broker_redis=state.broker_redis,
            queues=QUEUES,
        )
    )
    try:
        records, runs, rejected, drift = await stats_snapshot(db, configured=list(state.sources))
    finally:
        queues = await depths
    # Rendered as the Stats model would render it (same field order, UTC timestamps with Z;
    # tests/api/test_stats_sources.py compares the two), without validating it again.
    body = {"records": records, "runs": runs, "queues": queues, "rejected": rejected, "drift_events": drift}
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")
