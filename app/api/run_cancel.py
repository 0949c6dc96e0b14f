"""Cancelling a run from the API: app/core/run_end.py's SQL and rules on the async session."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.run_end import CANCELLED_ERROR, END_RUN_SQL, LOCK_RUN_SQL, check_cancellable, end_params
from app.core.run_status import RunStatus
from app.core.sql import named_params

_LOCK = text(named_params(LOCK_RUN_SQL))
_END = text(named_params(END_RUN_SQL))


async def cancel_run_async(session: AsyncSession, *, run_id: int) -> dict[str, Any]:
    """Cancel a queued or running run (commits); RunNotFound / RunNotCancellable otherwise."""
    try:
        run = (await session.execute(_LOCK, {"run_id": run_id})).mappings().first()
        check_cancellable(dict(run) if run else None, run_id)
        ended = (await session.execute(_END, end_params(run_id, RunStatus.CANCELLED, CANCELLED_ERROR))).mappings()
        row = dict(ended.one())
    except BaseException:
        await session.rollback()
        raise
    await session.commit()
    return row
