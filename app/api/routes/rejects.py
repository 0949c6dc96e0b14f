"""GET /rejects: records that failed validation, with their reason and raw payload."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import ReadConnectionDep
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import RejectList, SourceFilter
from app.db.queries import newest_rows
from app.db.session import Queryable

router = APIRouter(tags=["quality"])

COLUMNS = "id, run_id, source, chunk_no, line_no, external_id, reason, field, message, raw, created_at"


async def list_rejects(
    db: Queryable, *, source: str | None, run_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Rejected records, newest first."""
    filters = {"source": source, "run_id": run_id}
    return await newest_rows(db, table="rejected_records", columns=COLUMNS, filters=filters, limit=limit)


@router.get(
    "/rejects",
    response_model=RejectList,
    summary="Rejected records",
    responses=error_responses(422, *COMMON_ERRORS, 503),
)
async def rejects(
    db: ReadConnectionDep,
    source: Annotated[SourceFilter | None, Query(description="Only this source.")] = None,
    run_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only this run.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many.")] = 50,
) -> dict[str, Any]:
    """Rejected records with reason, field, message, raw payload and run, newest first."""
    return {"items": await list_rejects(db, source=source, run_id=run_id, limit=limit)}
