"""GET /drift: schema drift events (a field added, removed, or changing type)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import SessionDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import DriftList, SourceFilter

router = APIRouter(tags=["quality"])

COLUMNS = "id, source, run_id, kind, field, old_type, new_type, created_at"


async def list_drift(session: AsyncSession, *, source: str | None, limit: int) -> list[dict[str, Any]]:
    """Drift events, newest first."""
    where, params = ("source = :source", {"source": source, "limit": limit}) if source else ("TRUE", {"limit": limit})
    sql = f"SELECT {COLUMNS} FROM drift_events WHERE {where} ORDER BY id DESC LIMIT :limit"
    return [dict(row) for row in (await session.execute(text(sql), params)).mappings()]


@router.get(
    "/drift",
    response_model=DriftList,
    summary="Schema drift events",
    responses=error_responses(422, *COMMON_ERRORS, 503),
)
async def drift(
    session: SessionDep,
    source: Annotated[SourceFilter | None, Query(description="Only this source.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many.")] = 50,
) -> dict[str, Any]:
    """Drift events (added | removed | type_changed) with field, old/new type and run."""
    return {"items": await list_drift(session, source=source, limit=limit)}
