"""The API's async engines (asyncpg), opened and closed by the FastAPI lifespan. Every
connection carries a server-side statement timeout so no query can hold one for long.

Two pools, because reads and writes want different things:

- the write engine (POST /runs, webhooks, idempotency) hands out transactional
  sessions and pings each connection at checkout, so a write never starts on a dead one;
- the read engine runs in AUTOCOMMIT without pre-ping: a read-only request then costs
  only its own statements, with no ping, BEGIN or ROLLBACK round trips around them.
  A connection that died (PostgreSQL restarted) fails its first statement instead;
  SQLAlchemy then invalidates the whole pool, that request answers 503 and the next
  ones reconnect.

The hottest reads (GET /data, GET /stats) run their one statement with `fetch()` below:
straight on the asyncpg connection under the pooled SQLAlchemy connection, prepared once
per connection by asyncpg's statement cache, rows returned as asyncpg Records. SQLAlchemy's
statement execution and result processing cost as much as the rest of the request.
Failures keep the pool's behaviour: see `fetch()`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import Settings

STATEMENT_TIMEOUT_MS = 5_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 5.0

# What the query helpers accept: the read connection or a write session.
Queryable = AsyncConnection | AsyncSession


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _engine(settings: Settings, *, pool_size: int, max_overflow: int, **options: Any) -> AsyncEngine:
    return create_async_engine(
        settings.async_database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=CONNECT_TIMEOUT_S,
        pool_recycle=1800,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": CONNECT_TIMEOUT_S,
            "command_timeout": STATEMENT_TIMEOUT_MS / 1000 + 5,
            "server_settings": {
                "application_name": "ingest-api",
                "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
            },
        },
        **options,
    )


def create_engine(settings: Settings, *, pool_size: int = 5, max_overflow: int = 5) -> AsyncEngine:
    """The write engine: transactional sessions on pinged connections."""
    return _engine(settings, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


def create_read_engine(settings: Settings, *, pool_size: int = 20, max_overflow: int = 0) -> AsyncEngine:
    """The read engine: AUTOCOMMIT (no BEGIN/ROLLBACK per request), no pre-ping."""
    return _engine(settings, pool_size=pool_size, max_overflow=max_overflow, isolation_level="AUTOCOMMIT")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (we never lazy-load)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def fetch(conn: AsyncConnection, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one read statement (`$1`-style parameters) on the driver connection under `conn`.

    A failure is raised as SQLAlchemy would raise it, so the error handlers answer the
    same: a server error (statement timeout, bad value) as a DBAPIError carrying the
    driver's exception and its SQLSTATE; a connection that is gone by having SQLAlchemy
    run a trivial statement on it, which invalidates the whole pool (every connection
    opened before, as a PostgreSQL restart killed them all) and raises its
    "connection invalidated" error.
    """
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        pooled = sync.connection  # checked out already: no await needed
    else:
        pooled = await conn.get_raw_connection()
    driver: asyncpg.Connection = pooled.driver_connection
    try:
        return await driver.fetch(sql, *args)
    except Exception as exc:
        if driver.is_closed():
            await conn.exec_driver_sql("SELECT 1")  # raises, and invalidates the pool
        if isinstance(exc, asyncpg.PostgresError):
            raise DBAPIError(sql, None, exc, hide_parameters=True) from exc
        raise
