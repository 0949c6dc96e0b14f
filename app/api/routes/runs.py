"""POST /runs (start runs), GET /runs and GET /runs/{id}."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import structlog
from fastapi import APIRouter, Body, Header, Path, Query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import ApiKeyDep, ReadConnectionDep, SessionDep, SourcesDep
from app.api.errors import ApiError
from app.api.idempotency import claim_key, release_key, request_hash, store_response
from app.api.listing import newest_rows
from app.api.responses import COMMON_ERRORS, OrjsonResponse, error_responses
from app.api.run_creation import create_run_async
from app.api.schemas import Run, RunList, RunsRequest, RunStatus, SourceFilter
from app.core.enqueue import enqueue_fetch
from app.core.runs import RUN_COLUMNS, ActiveRunExists, SourcePaused, run_to_api
from app.core.sources_config import SourceConfig
from app.db.session import Queryable

log = structlog.get_logger("app.api.routes.runs")
router = APIRouter(tags=["runs"])

MAX_ID = 2**63 - 1


async def list_runs(
    db: Queryable, *, source: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """Runs, newest first, optionally filtered."""
    filters = {"source": source, "status": status}
    rows = await newest_rows(db, table="runs", columns=RUN_COLUMNS, filters=filters, limit=limit)
    return [run_to_api(row) for row in rows]


async def get_run(db: Queryable, *, run_id: int) -> dict[str, Any] | None:
    """One run by id, or None."""
    row = (await db.execute(text(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id"), {"id": run_id})).mappings()
    found = row.first()
    return run_to_api(dict(found)) if found else None


async def last_runs(db: Queryable, *, sources: list[str]) -> dict[str, dict[str, Any]]:
    """The newest run of each named source (one index probe per source)."""
    if not sources:
        return {}
    sql = f"""
        SELECT r.* FROM unnest(CAST(:names AS text[])) AS s(name)
        CROSS JOIN LATERAL (
            SELECT {RUN_COLUMNS} FROM runs WHERE runs.source = s.name ORDER BY id DESC LIMIT 1
        ) AS r
    """
    result = await db.execute(text(sql), {"names": sources})
    return {row["source"]: run_to_api(dict(row)) for row in result.mappings()}


async def active_runs(db: Queryable, *, sources: list[str]) -> list[dict[str, Any]]:
    """Queued or running runs of these sources."""
    sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE source = ANY(:names) AND status IN ('queued', 'running') ORDER BY id"
    return [dict(row) for row in (await db.execute(text(sql), {"names": sources})).mappings()]


def select_sources(configured: dict[str, SourceConfig], requested: list[str] | None) -> list[SourceConfig]:
    """The sources a POST /runs body names (every enabled pulled source when omitted)."""
    if requested is None:
        return [source for source in configured.values() if source.enabled and source.is_pulled]
    names = list(dict.fromkeys(requested))
    unknown = [name for name in names if name not in configured]
    if unknown:
        shown = ", ".join(repr(name[:100]) for name in unknown[:10])
        raise ApiError(404, f"unknown source(s): {shown}; see GET /sources", code="unknown_source")
    pushed = [name for name in names if not configured[name].is_pulled]
    if pushed:
        raise ApiError(
            422,
            f"source '{pushed[0]}' is a webhook source: it is fed by POST /webhooks/{pushed[0]} and cannot be run",
            code="not_runnable",
        )
    return [configured[name] for name in names]


def _conflict_message(runs: list[dict[str, Any]]) -> str:
    named = "; ".join(f"source '{r['source']}' already has an active run {r['id']} ({r['status']})" for r in runs)
    return f"{named}; no runs were created"


def _enqueue_all(run_ids: list[int]) -> list[int]:
    """Send one fetch message per run (blocking: runs in a worker thread); return the ids not sent."""
    for index, run_id in enumerate(run_ids):
        try:
            enqueue_fetch(run_id)
        except Exception as exc:  # broker down or misconfigured: report, never leak the URL
            log.error("enqueue_failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
            return run_ids[index:]
    return []


async def _fail_unsent(session: AsyncSession, *, run_ids: list[int], idempotency_key: str | None) -> None:
    await session.execute(
        text(
            "UPDATE runs SET status = 'failed', finished_at = now(), error = 'could not enqueue: broker unavailable' "
            "WHERE id = ANY(:ids) AND status = 'queued'"
        ),
        {"ids": run_ids},
    )
    if idempotency_key:
        await release_key(session, key=idempotency_key)
    await session.commit()


@router.post(
    "/runs",
    status_code=202,
    response_model=RunList,
    summary="Start runs",
    responses=error_responses(400, 401, 404, 409, 413, 422, *COMMON_ERRORS, 503),
)
async def start_runs(
    session: SessionDep,
    sources: SourcesDep,
    key_fingerprint: ApiKeyDep,
    body: Annotated[RunsRequest | None, Body(description="`{}` runs every enabled pulled source.")] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Replays the first response for the same key and body (24 h).",
        ),
    ] = None,
) -> OrjsonResponse:
    """Create one queued run per source and hand each to the fetch queue (all or nothing)."""
    request = body or RunsRequest.model_validate({})
    selected = select_sources(sources, request.sources)
    scoped_key = f"runs:{key_fingerprint}:{idempotency_key}" if idempotency_key else None
    if scoped_key:
        stored = await claim_key(session, key=scoped_key, body_hash=request_hash(request.model_dump()))
        if stored is not None:
            await session.rollback()
            if stored.request_hash != request_hash(request.model_dump()):
                raise ApiError(
                    422,
                    "this Idempotency-Key was already used with a different request body; use a new key",
                    code="idempotency_key_reused",
                )
            # jsonb reorders keys: re-render through the model so the replay matches the original.
            replay = RunList.model_validate(stored.response).model_dump(mode="json")
            return OrjsonResponse(replay, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"})
    busy = await active_runs(session, sources=[source.name for source in selected])
    if busy:
        await session.rollback()
        raise ApiError(409, _conflict_message(busy), code="active_run")
    try:
        created = [
            await create_run_async(session, source=source, trigger="api", idempotency_key=idempotency_key)
            for source in selected
        ]
    except ActiveRunExists as exc:  # lost a race with another trigger
        await session.rollback()
        raise ApiError(409, _conflict_message([exc.run]), code="active_run") from None
    except SourcePaused as exc:  # schema drift paused it (on_drift = "pause")
        await session.rollback()
        raise ApiError(409, str(exc), code="source_paused") from None
    payload = RunList(runs=[Run.model_validate(run_to_api(run)) for run in created]).model_dump(mode="json")
    if scoped_key:
        await store_response(session, key=scoped_key, status_code=202, response=payload)
    await session.commit()
    # Enqueue only after commit, so a worker never looks for a run it cannot see yet.
    unsent = await anyio.to_thread.run_sync(_enqueue_all, [run["id"] for run in created])
    if unsent:
        await _fail_unsent(session, run_ids=unsent, idempotency_key=scoped_key)
        sent = [run["id"] for run in created if run["id"] not in unsent]
        raise ApiError(
            503,
            f"the broker is unavailable: run(s) {', '.join(map(str, unsent))} could not be queued and were marked "
            f"failed" + (f"; run(s) {', '.join(map(str, sent))} were queued" if sent else "") + "; retry later",
        )
    return OrjsonResponse(payload, status_code=202)


@router.get("/runs", response_model=RunList, summary="List runs", responses=error_responses(422, *COMMON_ERRORS, 503))
async def read_runs(
    db: ReadConnectionDep,
    source: Annotated[SourceFilter | None, Query(description="Only this source.")] = None,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many runs.")] = 50,
) -> dict[str, Any]:
    """Runs, newest first."""
    return {"runs": await list_runs(db, source=source, status=status, limit=limit)}


@router.get(
    "/runs/{id}", response_model=Run, summary="One run", responses=error_responses(404, 422, *COMMON_ERRORS, 503)
)
async def read_run(
    db: ReadConnectionDep, id: Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")]
) -> dict[str, Any]:
    """A run by id; 404 when there is none."""
    run = await get_run(db, run_id=id)
    if run is None:
        raise ApiError(404, f"run {id} not found")
    return run
