"""Shared dependencies, as `Annotated` aliases routes declare by type.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker
thread, and that hop cost more than the dependencies themselves. Read-only routes take
`ReadConnectionDep` (autocommit, see app/db/session.py); routes that write take
`SessionDep`, a transactional session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.api.auth import match_api_key
from app.api.errors import ApiError
from app.core.sources_config import SourceConfig
from app.settings import Settings

log = structlog.get_logger("app.api.deps")


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def _database_unavailable(exc: Exception) -> ApiError:
    log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}")
    return ApiError(503, "the database is unavailable; retry later")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A transactional session on the write engine, for routes that change data."""
    async with request.app.state.sessionmaker() as session:
        try:
            await session.connection()  # check out now, so "database down" is named as such
        except (OSError, DBAPIError, PoolTimeout) as exc:
            raise _database_unavailable(exc) from None
        yield session


async def get_read_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection on the read engine, for routes that only read."""
    connection = request.app.state.read_engine.connect()
    try:
        await connection.start()  # check out now, so "database down" is named as such
    except (OSError, DBAPIError, PoolTimeout) as exc:
        raise _database_unavailable(exc) from None
    try:
        yield connection
    finally:
        await connection.close()


async def get_sources(request: Request) -> dict[str, SourceConfig]:
    return request.app.state.sources


# Declared as security schemes so the OpenAPI document shows both ways to send a key.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An entry of API_KEYS.")
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`, same keys as X-API-Key.")


async def require_api_key(
    settings: Annotated[Settings, Depends(get_app_settings)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The fingerprint of the caller's valid key; 401 otherwise."""
    challenge = {"WWW-Authenticate": 'Bearer realm="ingest"'}
    entries = settings.api_key_entries
    if not entries:
        raise ApiError(
            401, "no API keys are configured (set API_KEYS); write endpoints are disabled", headers=challenge
        )
    presented = header_key or (bearer.credentials if bearer else None)
    if not presented:
        raise ApiError(401, "an API key is required: send X-API-Key or Authorization: Bearer", headers=challenge)
    fingerprint = match_api_key(entries, presented)
    if fingerprint is None:
        raise ApiError(401, "invalid API key", headers=challenge)
    return fingerprint


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadConnectionDep = Annotated[AsyncConnection, Depends(get_read_connection)]
SourcesDep = Annotated[dict[str, SourceConfig], Depends(get_sources)]
ApiKeyDep = Annotated[str, Depends(require_api_key)]
