"""API test fixtures: the real app (create_app + its lifespan) behind httpx's ASGI
transport, against the session's PostgreSQL test database and test Redis database."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from app.core.run_status import RunStatus
from app.main import create_app
from app.settings import Settings

PLAIN_KEY = "test-key"
HASHED_KEY = "hashed-key"  # API_KEYS holds sha256:<hex of this>
AUTH = {"X-API-Key": PLAIN_KEY}

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_client(db: psycopg.Connection) -> AsyncIterator[ClientFactory]:
    """Build clients for apps with custom Settings; everything is closed after the test."""
    async with AsyncExitStack() as stack:

        async def factory(settings: Settings | None = None, **overrides: Any) -> httpx.AsyncClient:
            if settings is None:
                settings = Settings(**{"rate_limit": "100000/minute", **overrides})
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://api.test"))

        yield factory


@pytest.fixture
async def client(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client()


def insert_records(db: psycopg.Connection, rows: Iterable[dict[str, Any]]) -> list[int]:
    """Insert records as the pipeline would (plus their source_stats counts); return ids."""
    ids = []
    per_source: dict[str, int] = {}
    for row in rows:
        data = row.get("data", {"external_id": row["external_id"]})
        values = {
            "source": row["source"],
            "external_id": row["external_id"],
            "title": row.get("title"),
            "content": row.get("content"),
            "author": row.get("author"),
            "url": row.get("url"),
            "published_at": row.get("published_at"),
            "data": orjson.dumps(data).decode(),
            "content_hash": hashlib.sha256(orjson.dumps(data)).digest(),
            "updated_at": row.get("updated_at", datetime.now(UTC)),
        }
        record_id = db.execute(
            """INSERT INTO records (source, external_id, title, content, author, url, published_at, data,
                                    content_hash, updated_at)
               VALUES (%(source)s, %(external_id)s, %(title)s, %(content)s, %(author)s, %(url)s, %(published_at)s,
                       %(data)s::jsonb, %(content_hash)s, %(updated_at)s)
               RETURNING id""",
            values,
        ).fetchone()[0]
        ids.append(record_id)
        per_source[row["source"]] = per_source.get(row["source"], 0) + 1
    for source, count in per_source.items():
        db.execute(
            """INSERT INTO source_stats (source, records) VALUES (%s, %s)
               ON CONFLICT (source) DO UPDATE SET records = source_stats.records + EXCLUDED.records""",
            (source, count),
        )
    return ids


def insert_run(db: psycopg.Connection, source: str, status: str = RunStatus.QUEUED, **fields: Any) -> int:
    """Insert a run row directly; return its id."""
    columns = {"source": source, "trigger": "schedule", "status": status, "config": "{}", **fields}
    if status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        columns.setdefault("finished_at", datetime.now(UTC))
    names = ", ".join(columns)
    placeholders = ", ".join(f"%({name})s" for name in columns)
    return db.execute(f"INSERT INTO runs ({names}) VALUES ({placeholders}) RETURNING id", columns).fetchone()[0]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the error envelope with this status; return its `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    return error
