"""GET /sources: the configured sources with their checkpoint and last run.

Built from sources.toml (loaded at start-up) plus the database; header values and
secrets are never part of the answer (headers are not returned at all).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import ReadConnectionDep, SourcesDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.routes.runs import last_runs
from app.api.schemas import SourceList
from app.db.session import Queryable

router = APIRouter(tags=["sources"])


async def source_state(db: Queryable, *, names: list[str]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Checkpoint values and paused reasons of these sources."""
    checkpoints = await db.execute(
        text("SELECT source, value FROM checkpoints WHERE source = ANY(:names)"), {"names": names}
    )
    paused = await db.execute(
        text("SELECT name, paused_reason FROM sources WHERE name = ANY(:names)"), {"names": names}
    )
    return {row.source: row.value for row in checkpoints}, {row.name: row.paused_reason for row in paused}


@router.get(
    "/sources", response_model=SourceList, summary="Configured sources", responses=error_responses(*COMMON_ERRORS, 503)
)
async def list_sources(db: ReadConnectionDep, sources: SourcesDep) -> dict[str, Any]:
    """Every configured source: kind, schedule, enabled, checkpoint, last run."""
    names = list(sources)
    checkpoints, paused = await source_state(db, names=names)
    last = await last_runs(db, sources=names)
    return {
        "sources": [
            {
                "name": source.name,
                "kind": source.kind,
                "schedule": source.schedule,
                "enabled": source.enabled,
                "paused_reason": paused.get(source.name),
                "checkpoint": checkpoints.get(source.name),
                "last_run": last.get(source.name),
            }
            for source in sources.values()
        ]
    }
