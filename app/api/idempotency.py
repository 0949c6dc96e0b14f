"""`Idempotency-Key` for POST endpoints, stored in table idempotency_keys.

The claim is an INSERT in the request's own transaction: a concurrent request with the
same key blocks on that row until the first commits (then replays its response) or
rolls back (then proceeds itself). Only successful responses are stored, so a request
that failed (409, 503...) can be retried with the same key. Keys expire after
REPLAY_WINDOW; an expired key is claimed afresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

REPLAY_WINDOW = "24 hours"

_CLAIM_SQL = f"""
INSERT INTO idempotency_keys (key, request_hash, status_code, response)
VALUES (:key, :request_hash, 0, 'null'::jsonb)
ON CONFLICT (key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status_code = 0, response = 'null'::jsonb, created_at = now()
    WHERE idempotency_keys.created_at < now() - interval '{REPLAY_WINDOW}'
RETURNING key
"""
_STORED_SQL = "SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = :key"
_STORE_SQL = (
    "UPDATE idempotency_keys SET status_code = :status_code, response = CAST(:response AS jsonb) WHERE key = :key"
)
_RELEASE_SQL = "DELETE FROM idempotency_keys WHERE key = :key"


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status_code: int
    response: Any


def request_hash(body: Any) -> str:
    """A digest of the request body, independent of key order and whitespace."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim_key(session: AsyncSession, *, key: str, body_hash: str) -> StoredResponse | None:
    """Claim the key for this transaction (None), or return the response stored under it."""
    claimed = (await session.execute(text(_CLAIM_SQL), {"key": key, "request_hash": body_hash})).first()
    if claimed is not None:
        return None
    row = (await session.execute(text(_STORED_SQL), {"key": key})).mappings().one()
    return StoredResponse(row["request_hash"], row["status_code"], row["response"])


async def store_response(session: AsyncSession, *, key: str, status_code: int, response: Any) -> None:
    """Record the response of the claimed key (committed with the caller's transaction)."""
    await session.execute(
        text(_STORE_SQL), {"key": key, "status_code": status_code, "response": orjson.dumps(response).decode()}
    )


async def release_key(session: AsyncSession, *, key: str) -> None:
    """Forget a stored key so the request can be retried."""
    await session.execute(text(_RELEASE_SQL), {"key": key})
