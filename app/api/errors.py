"""One error envelope for every failure: `{"error": {"code", "message", "request_id"}}`.

Handlers here replace FastAPI's defaults (HTTPException, validation errors, unknown
routes, 405) so clients never see another shape, and never a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from app.api.responses import OrjsonResponse

log = structlog.get_logger("app.api.errors")

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by routes and dependencies; rendered as the error envelope."""

    def __init__(
        self, status_code: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.status_code = status_code
        self.code = code or ERROR_CODES.get(status_code, "error")
        self.message = message
        self.headers = dict(headers or {})


def request_id_of(scope: Scope) -> str:
    """The id the request-context middleware assigned (empty outside a request)."""
    return str(scope.get("state", {}).get("request_id", ""))


def error_response(
    scope: Scope, status_code: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
) -> OrjsonResponse:
    """Build the envelope response for this request."""
    body = {
        "error": {
            "code": code or ERROR_CODES.get(status_code, "error"),
            "message": message,
            "request_id": request_id_of(scope),
        }
    }
    return OrjsonResponse(body, status_code=status_code, headers=dict(headers or {}))


def _where(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "request"
    kind, rest = loc[0], [str(part) for part in loc[1:]]
    if kind == "body":
        return f"body field '{'.'.join(rest)}'" if rest else "request body"
    if kind == "header" and rest:
        return f"header '{rest[0].title()}'"
    names = {"query": "query parameter", "path": "path parameter", "cookie": "cookie"}
    if kind in names and rest:
        return f"{names[kind]} '{rest[0]}'"
    return ".".join(str(part) for part in loc)


def validation_message(errors: list[Any]) -> str:
    """Say which parameter failed and why, for every error, without echoing its value."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("request body is not valid JSON")
            continue
        parts.append(f"{_where(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, ApiError)
    return error_response(request.scope, exc.status_code, exc.message, code=exc.code, headers=exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {headers.get('Allow', '')}"
    elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        message = "request body could not be decoded (expected UTF-8 JSON)"
    else:
        message = str(exc.detail)
    return error_response(request.scope, exc.status_code, message, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.scope, 422, validation_message(list(exc.errors())))


async def _database_error(request: Request, exc: Exception) -> OrjsonResponse:
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate == "57014":  # query_canceled: our statement_timeout
        message = "the query took too long and was cancelled; narrow the filters or page with the cursor"
        return error_response(request.scope, 503, message, code="query_timeout")
    if (sqlstate or "").startswith("22"):  # data exception, e.g. a NUL character in a text parameter
        message = "a parameter value cannot be used (for example it contains a NUL character)"
        return error_response(request.scope, 422, message, code="validation_error")
    connection_lost = isinstance(exc, PoolTimeout | OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if connection_lost or (sqlstate or "").startswith("08"):
        log.warning("database_unavailable", error=type(exc).__name__, request_id=request_id_of(request.scope))
        return error_response(request.scope, 503, "the database is unavailable; retry later")
    return await _unexpected(request, exc)


async def _dependency_down(request: Request, exc: Exception) -> OrjsonResponse:
    which = "Redis" if isinstance(exc, RedisError) else "a dependency"
    log.warning("dependency_unavailable", error=f"{type(exc).__name__}: {exc}", request_id=request_id_of(request.scope))
    return error_response(request.scope, 503, f"{which} is unavailable; retry later")


async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
    # Normally the request-context middleware catches first; this is the last resort.
    log.error("unhandled_exception", request_id=request_id_of(request.scope), exc_info=exc)
    return error_response(request.scope, 500, "internal server error")


def install_exception_handlers(app: FastAPI) -> None:
    """Route every error type through the envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(RedisError, _dependency_down)
    app.add_exception_handler(OSError, _dependency_down)  # e.g. connection refused while connecting
    app.add_exception_handler(Exception, _unexpected)
