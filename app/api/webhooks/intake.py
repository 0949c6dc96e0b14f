"""Durable intake of one verified delivery, in ONE transaction.

The delivery id is claimed first (so a repeated `webhook-id` is accepted once), then
the delivery's records are stored as a raw chunk of the source's open batching window
(a push run), opening a new window when none is open. The caller answers 202 only
after this commits, so an accepted delivery is never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import exact_json
from app.core.raw_format import INSERT_RAW_CHUNK, MAX_RAW_DEPTH, raw_chunk_params, raw_row
from app.core.run_status import RunStatus
from app.core.sources_config import SourceConfig
from app.core.sql import named_params


@dataclass(frozen=True)
class Intake:
    run_id: int
    accepted: int
    duplicate: bool
    opened_window: bool


def delivery_rows(body: Any) -> list[list[Any]]:
    """A JSON object or array as raw rows; non-object elements become parse errors (rejected later)."""
    items = body if isinstance(body, list) else [body]
    return [
        raw_row(item, position) if isinstance(item, dict)
        else raw_row(None, position, "array element is not a JSON object", _as_text(item))
        for position, item in enumerate(items, start=1)
    ]


def _as_text(value: Any) -> str:
    if exact_json.nesting_exceeds(value, MAX_RAW_DEPTH):
        return f"(an array or object nested deeper than {MAX_RAW_DEPTH} levels)"
    return exact_json.dumps(value).decode().lstrip()


_CLAIM_DELIVERY = text(
    "INSERT INTO webhook_deliveries (source, webhook_id) VALUES (:source, :webhook_id)"
    " ON CONFLICT DO NOTHING RETURNING webhook_id"
)
_EARLIER_DELIVERY = text(
    "SELECT run_id, accepted FROM webhook_deliveries WHERE source = :source AND webhook_id = :webhook_id"
)
_OPEN_WINDOW = text(
    "SELECT id FROM runs WHERE source = :source AND trigger = 'webhook' AND status = :running_status"
    " AND chunks_total IS NULL FOR UPDATE"
)
_NEW_WINDOW = text(
    "INSERT INTO runs (source, trigger, status, config, started_at, heartbeat_at)"
    " VALUES (:source, 'webhook', :running_status, CAST(:config AS jsonb), now(), now()) RETURNING id"
)
_NEXT_CHUNK = text("SELECT coalesce(max(chunk_no) + 1, 0) FROM raw_chunks WHERE run_id = :run_id")
_STORE_CHUNK = text(named_params(INSERT_RAW_CHUNK))
_NOTE_DELIVERY = text(
    "UPDATE webhook_deliveries SET run_id = :run_id, accepted = :accepted"
    " WHERE source = :source AND webhook_id = :webhook_id"
)


async def _open_window(session: AsyncSession, source: SourceConfig) -> tuple[int, bool]:
    """The open push run of the source (locked), opening one if none is open."""
    params = {"source": source.name, "running_status": RunStatus.RUNNING.value}
    for _ in range(3):
        run_id = (await session.execute(_OPEN_WINDOW, params)).scalar()
        if run_id is not None:
            return int(run_id), False
        try:
            async with session.begin_nested():
                config = orjson.dumps(source.snapshot()).decode()
                created = (await session.execute(_NEW_WINDOW, {**params, "config": config})).scalar()
                return int(created), True  # type: ignore[arg-type]
        except IntegrityError:
            continue  # a concurrent delivery opened it first: lock theirs
    raise RuntimeError("could not open a push window after 3 attempts")


async def accept_delivery(
    session: AsyncSession, *, source: SourceConfig, webhook_id: str, rows: list[list[Any]]
) -> Intake:
    """Store one delivery (commits); a delivery id seen before changes nothing."""
    ids = {"source": source.name, "webhook_id": webhook_id}
    claimed = (await session.execute(_CLAIM_DELIVERY, ids)).scalar()
    if claimed is None:
        await session.rollback()
        earlier = (await session.execute(_EARLIER_DELIVERY, ids)).one()
        await session.rollback()
        return Intake(run_id=earlier.run_id, accepted=earlier.accepted, duplicate=True, opened_window=False)
    run_id, opened = await _open_window(session, source)
    chunk_no = int((await session.execute(_NEXT_CHUNK, {"run_id": run_id})).scalar_one())
    stored = await session.execute(_STORE_CHUNK, raw_chunk_params(run_id=run_id, chunk_no=chunk_no, rows=rows))
    if stored.scalar() is None:  # impossible under the window's row lock; never acknowledge a lost delivery
        raise RuntimeError(f"push run {run_id} already has a chunk {chunk_no}")
    await session.execute(_NOTE_DELIVERY, {**ids, "run_id": run_id, "accepted": len(rows)})
    await session.commit()
    return Intake(run_id=run_id, accepted=len(rows), duplicate=False, opened_window=opened)
