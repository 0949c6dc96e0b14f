"""Pure ASGI middleware: request id, security headers, access log and metrics, the
last-resort 500, and the request body limit.

Pure ASGI rather than BaseHTTPMiddleware: no extra task per request, and the body
limit can count bytes of chunked bodies that carry no Content-Length.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.api.routes.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("app.access")
# The stdlib logger the access lines go through: when it would drop INFO (LOG_LEVEL above
# it), the line is not built at all (structlog runs its processors before that check).
_access_logger = logging.getLogger("app.access")

# Metric children per (method, route, status), so a request does not look its labels up
# again; past this many combinations (odd methods) each request calls .labels(), so a
# client inventing methods cannot grow the cache without bound.
MAX_CACHED_LABELS = 1000

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_BODY_BYTES = 1024 * 1024

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Swagger UI and ReDoc load their bundles from jsDelivr and start with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


# The console page: its own script and stylesheet, fetch() to this origin only.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _csp_for(path: str) -> str:
    if path in DOCS_PATHS:
        return DOCS_CSP
    if path == "/" or path.startswith("/static/"):
        return CONSOLE_CSP
    return API_CSP


_CSP_HEADERS = {
    csp: (b"content-security-policy", csp.encode()) for csp in (API_CSP, DOCS_CSP, CONSOLE_CSP)
}
_DEFAULT_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def _with_context_headers(raw: Any, request_id: bytes, csp: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The response headers plus X-Request-ID (replacing any) and the security headers
    the response did not set itself."""
    headers = [(name, value) for name, value in raw if name.lower() != b"x-request-id"]
    present = {name.lower() for name, _ in headers}
    headers.append((b"x-request-id", request_id))
    headers.extend(header for header in (*_DEFAULT_HEADERS, csp) if header[0] not in present)
    return headers


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Outermost: every response, including errors raised below, gets these headers."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if REQUEST_ID_RE.match(incoming) else secrets.token_hex(16)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started_at"] = started
        status = 500
        response_started = False
        csp = _CSP_HEADERS[_csp_for(scope["path"])]
        request_id_header = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = _with_context_headers(message.get("headers", ()), request_id_header, csp)
            await send(message)

        try:
            # Every log line emitted while serving this request carries its id.
            tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
        except Exception:
            log.exception("unhandled_exception", request_id=request_id, method=scope["method"], path=scope["path"])
            status = 500
            if not response_started:
                await error_response(scope, 500, "internal server error")(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self._observe(scope["method"], _route_label(scope), status, elapsed)
            if _access_logger.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    request_id=request_id,
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    latency_ms=round(elapsed * 1000, 2),
                )

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        children = self._metric_children.get(key)
        if children is None:
            children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route))
            if len(self._metric_children) < MAX_CACHED_LABELS:
                self._metric_children[key] = children
        children[0].inc()
        children[1].observe(elapsed)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`, whether or not Content-Length tells the truth.

    The body (at most `max_bytes`) is read before the app runs and replayed to it, so a
    chunked or lying upload is cut off without the route ever seeing it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, larger_limits: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Path prefix -> limit, for routes whose bodies are legitimately bigger (webhook batches).
        self.larger_limits = larger_limits or {}

    def _limit(self, scope: Scope) -> int:
        for prefix, limit in self.larger_limits.items():
            if scope["path"].startswith(prefix):
                return limit
        return self.max_bytes

    def _too_large(self, scope: Scope):  # type: ignore[no-untyped-def]
        return error_response(scope, 413, f"request body exceeds {self._limit(scope)} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(scope, 400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(declared) > self._limit(scope):
                await self._too_large(scope)(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self._limit(scope):
                await self._too_large(scope)(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
