"""The JSON response class (orjson) and the error responses every route documents."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from app.api.schemas import ErrorResponse


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson: datetimes, UUIDs and non-str keys handled natively."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


_DESCRIPTIONS = {
    400: "Bad request: a corrupted `cursor`, or a body that cannot be decoded.",
    401: "Missing or wrong API key, or no keys configured.",
    404: "Not found.",
    409: "Conflict (an active run, or an Idempotency-Key request in flight).",
    413: "Request body larger than the limit.",
    422: "A parameter or the body failed validation; the message names it.",
    429: "Rate limit exceeded; see `Retry-After`.",
    500: "Unexpected server error (never carries a stack trace).",
    503: "A dependency (PostgreSQL, Redis, broker) is unavailable.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses, all in the error envelope."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


# Every rate-limited route can answer these.
COMMON_ERRORS = (429, 500)
