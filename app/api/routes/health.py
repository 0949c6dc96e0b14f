"""GET /health: PostgreSQL `SELECT 1` and Redis PING, each with a short timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from sqlalchemy import text

from app.api.responses import OrjsonResponse
from app.api.schemas import Health

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 2.0


async def _check(probe: Callable[[], Awaitable[object]]) -> str:
    """'ok', or why the probe failed (type and message, no traceback)."""
    try:
        await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


@router.get(
    "/health",
    response_model=Health,
    summary="Liveness and dependencies",
    responses={503: {"model": Health, "description": "A dependency is down; its check says why."}},
)
async def health(request: Request) -> OrjsonResponse:
    """200 when PostgreSQL and Redis answer, else 503 `degraded` naming what failed."""
    engine, redis = request.app.state.engine, request.app.state.redis

    async def database() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    db_status, redis_status = await asyncio.gather(_check(database), _check(redis.ping))
    checks = {"database": db_status, "redis": redis_status}
    ok = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return OrjsonResponse(body.model_dump(), status_code=200 if ok else 503)
