"""The ceiling for GET /data: plain asyncpg + Starlette serving the same first-page query.

    uvicorn bench.reference_app:app --app-dir scripts

No validation, no middleware, no ORM layer: the page query and the maintained total, the
same JSON shape, rendered by orjson. Whatever our API costs above this is framework work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PAGE_SQL = (
    "SELECT id, source, external_id, title, content, author, url, published_at, data, content_hash,"
    " first_seen_at, updated_at FROM records ORDER BY id LIMIT $1"
)
TOTAL_SQL = "SELECT coalesce(sum(records), 0)::bigint FROM source_stats"


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                                  schema="pg_catalog")

    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=20, init=init)
    try:
        yield
    finally:
        await app.state.pool.close()


async def data(request: Request) -> Response:
    page_size = 50
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(PAGE_SQL, page_size + 1)
        total = await conn.fetchval(TOTAL_SQL)
    items = [dict(row) for row in rows[:page_size]]
    for item in items:
        item["content_hash"] = item["content_hash"].hex()
    body = {"items": items, "page": 1, "page_size": page_size, "total": total, "total_is_estimate": False,
            "next_cursor": None}
    return Response(orjson.dumps(body), media_type="application/json")


app = Starlette(routes=[Route("/data", data)], lifespan=lifespan)
