"""Text as PostgreSQL stores it: `text` and `jsonb` cannot hold NUL, so a NUL is replaced
by U+FFFD (the replacement character) on the way in. One rule for every column: the
upsert writes with it, and the fetch stage's row keys are computed with it."""

from __future__ import annotations

import re
from typing import Any

import orjson

from app.core.exact_json import MAX_DEPTH, nesting_exceeds, stdlib_dumps

NUL = "\x00"
REPLACEMENT = "\ufffd"


def stored_text(text: str | None) -> str | None:
    """A text value as PostgreSQL will hold it: NUL replaced."""
    return text.replace(NUL, REPLACEMENT) if text and NUL in text else text


def stored_key(external_id: str) -> str:
    """The external id as the records table holds it (records.external_id).

    The fetch stage's row keys (workers/pipeline/fetch/raw_digest.py) must be exactly this,
    or rows stored unchanged would no longer be recognised."""
    return external_id.replace(NUL, REPLACEMENT) if NUL in external_id else external_id


def stored_json(value: Any) -> str | None:
    """A value as jsonb text PostgreSQL accepts: NUL replaced in every string and key.

    What orjson refuses is stored too (app/core/exact_json.py): integers beyond 64 bits
    exactly; a number no double holds as its name ("Infinity", "NaN"), and a lone
    surrogate as U+FFFD, since jsonb has no spelling for either; a value nested deeper
    than MAX_DEPTH as its JSON text, a string."""
    if value is None:
        return None
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return _exact_stored_json(value)
    if b"\\u0000" in text:  # rare: only then pay for a scrubbing pass
        text = orjson.dumps(_scrub(value), option=orjson.OPT_NON_STR_KEYS)
    return text.decode()


def _exact_stored_json(value: Any) -> str:
    if nesting_exceeds(value, MAX_DEPTH):
        return stdlib_dumps(stdlib_dumps(value))  # ASCII, any NUL or surrogate escaped: always accepted
    scrubbed = _scrub(value)
    try:
        return orjson.dumps(scrubbed, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return stdlib_dumps(scrubbed, ensure_ascii=False)  # integers beyond 64 bits


_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = value.replace(NUL, REPLACEMENT)
        return _SURROGATE.sub(REPLACEMENT, value) if not value.isascii() else value
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, float) and value - value != 0:  # NaN or ±Infinity
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value
