"""GET /drift: schema drift events (a field added, removed, or changing type)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import ReadConnectionDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import DriftList, SourceFilter
from app.db.queries import newest_rows
from app.db.session import Queryable

router = APIRouter(tags=["quality"])

COLUMNS = "id, source, run_id, kind, field, old_type, new_type, created_at"


async def list_drift(db: Queryable, *, source: str | None, limit: int) -> list[dict[str, Any]]:
    """Drift events, newest first."""
    return await newest_rows(db, table="drift_events", columns=COLUMNS, filters={"source": source}, limit=limit)


@router.get(
    "/drift",
    response_model=DriftList,
    summary="Schema drift events",
    responses=error_responses(422, *COMMON_ERRORS, 503),
)
async def drift(
    db: ReadConnectionDep,
    source: Annotated[SourceFilter | None, Query(description="Only this source.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many.")] = 50,
) -> dict[str, Any]:
    """Drift events (added | removed | type_changed) with field, old/new type and run."""
    return {"items": await list_drift(db, source=source, limit=limit)}
