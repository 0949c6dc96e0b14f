"""The API's async engine (asyncpg): one pool per process, opened and closed by the
FastAPI lifespan, with a server-side statement timeout so no query can hold a
connection for long."""

from __future__ import annotations

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.settings import Settings

STATEMENT_TIMEOUT_MS = 5_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 5.0


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: Settings, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An asyncpg engine whose every connection carries the API's timeouts."""
    return create_async_engine(
        settings.async_database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=CONNECT_TIMEOUT_S,
        pool_recycle=1800,
        pool_pre_ping=True,
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
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (we never lazy-load)."""
    return async_sessionmaker(engine, expire_on_commit=False)
