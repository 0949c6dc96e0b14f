"""Creating runs from the API: app/core/runs.py's SQL and rules on the async session.

Kept on the API side so that app/core (imported by the workers and the CLI) needs no
SQLAlchemy asyncio; `make lint` checks that (import-linter, pyproject.toml).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.runs import (
    ACTIVE_RUN_SQL,
    INSERT_RUN_SQL,
    PAUSED_REASON_SQL,
    ActiveRunExists,
    SourcePaused,
    active_run_params,
    run_params,
)
from app.core.sources_config import SourceConfig
from app.core.sql import named_params

INSERT_RUN_SQL_NAMED = named_params(INSERT_RUN_SQL)
ACTIVE_RUN_SQL_NAMED = named_params(ACTIVE_RUN_SQL)
PAUSED_REASON_SQL_NAMED = named_params(PAUSED_REASON_SQL)
ACTIVE_RUN_CONSTRAINT = "runs_one_active_per_source"


def _is_active_run_violation(exc: IntegrityError) -> bool:
    cause = exc.orig.__cause__ if exc.orig is not None else None
    return getattr(exc.orig, "sqlstate", None) == "23505" and (
        getattr(cause, "constraint_name", ACTIVE_RUN_CONSTRAINT) == ACTIVE_RUN_CONSTRAINT
    )


async def create_run_async(
    session: AsyncSession,
    *,
    source: SourceConfig,
    trigger: str,
    idempotency_key: str | None = None,
    _retry: bool = True,
) -> dict[str, Any]:
    """Insert a queued run in the caller's transaction (savepoint); ActiveRunExists if busy."""
    try:
        async with session.begin_nested():
            result = await session.execute(text(INSERT_RUN_SQL_NAMED), run_params(source, trigger, idempotency_key))
            created = result.mappings().first()
            if created is not None:
                return dict(created)
        reason = (await session.execute(text(PAUSED_REASON_SQL_NAMED), {"source": source.name})).scalar()
        raise SourcePaused(source.name, reason)
    except IntegrityError as exc:
        if not _is_active_run_violation(exc):
            raise
    active = (await session.execute(text(ACTIVE_RUN_SQL_NAMED), active_run_params(source))).mappings().first()
    if active is None and _retry:  # it finished between our insert and our look: retry once
        return await create_run_async(
            session, source=source, trigger=trigger, idempotency_key=idempotency_key, _retry=False
        )
    if active is None:
        raise ActiveRunExists({"id": "?", "source": source.name, "status": "active"})
    raise ActiveRunExists(dict(active))
