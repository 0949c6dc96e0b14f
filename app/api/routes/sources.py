"""GET /sources: the configured sources with their checkpoint and last run.

Built from sources.toml (loaded at start-up) plus the database; header values and
secrets are never part of the answer (headers are not returned at all).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ReadConnectionDep, SourcesDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import SourceList
from app.db.queries import last_runs, source_state

router = APIRouter(tags=["sources"])


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
