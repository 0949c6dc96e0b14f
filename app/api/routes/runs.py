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
from app.api.responses import COMMON_ERRORS, OrjsonResponse, error_responses
from app.api.run_cancel import cancel_run_async
from app.api.run_creation import create_run_async
from app.api.schemas import Run, RunDetail, RunList, RunsRequest, SourceFilter
from app.core.enqueue import enqueue_fetch
from app.core.run_end import RunNotCancellable, RunNotFound
from app.core.run_status import RunStatus
from app.core.runs import ActiveRunExists, SourcePaused, run_to_api
from app.core.selection import NotRunnable, UnknownSources, select_sources
from app.core.sources_config import SourceConfig
from app.db.queries import active_runs, get_run, list_runs

log = structlog.get_logger("app.api.routes.runs")
router = APIRouter(tags=["runs"])

MAX_ID = 2**63 - 1


def _selected(configured: dict[str, SourceConfig], requested: list[str] | None) -> list[SourceConfig]:
    try:
        return select_sources(configured, requested)
    except UnknownSources as exc:
        raise ApiError(404, f"{exc}; see GET /sources", code="unknown_source") from None
    except NotRunnable as exc:
        raise ApiError(422, str(exc), code="not_runnable") from None


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
            "UPDATE runs SET status = :failed_status, finished_at = now(),"
            " error = 'could not enqueue: broker unavailable' WHERE id = ANY(:ids) AND status = :queued_status"
        ),
        {"ids": run_ids, "failed_status": RunStatus.FAILED.value, "queued_status": RunStatus.QUEUED.value},
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
    selected = _selected(sources, request.sources)
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
            f"{RunStatus.FAILED}" + (f"; run(s) {', '.join(map(str, sent))} were queued" if sent else "")
            + "; retry later",
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
    "/runs/{id}",
    response_model=RunDetail,
    summary="One run, with its progress",
    responses=error_responses(404, 422, *COMMON_ERRORS, 503),
)
async def read_run(
    db: ReadConnectionDep, id: Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")]
) -> dict[str, Any]:
    """A run by id with its `progress` (where its fetch is); 404 when there is none."""
    run = await get_run(db, run_id=id)
    if run is None:
        raise ApiError(404, f"run {id} not found")
    return run


@router.post(
    "/runs/{id}/cancel",
    response_model=Run,
    summary="Cancel a run",
    responses=error_responses(401, 404, 409, 422, *COMMON_ERRORS, 503),
)
async def cancel_run(
    session: SessionDep,
    _key: ApiKeyDep,
    id: Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")],
) -> dict[str, Any]:
    """Stop a queued or running run at its next chunk boundary: status `cancelled`, the counts
    of what committed, the checkpoint not moved, the source free for a new run. 409 for a
    finished run or an open webhook window."""
    try:
        ended = await cancel_run_async(session, run_id=id)
    except RunNotFound:
        raise ApiError(404, f"run {id} not found") from None
    except RunNotCancellable as exc:
        raise ApiError(409, str(exc), code="not_cancellable") from None
    log.info("run_cancelled", run_id=id)
    return run_to_api(ended)
