"""Text as PostgreSQL stores it: `text` and `jsonb` cannot hold NUL, so a NUL is replaced
by U+FFFD (the replacement character) on the way in. One rule for every column: the
upsert writes with it, and the fetch stage's row keys are computed with it."""

from __future__ import annotations

from typing import Any

import orjson

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
    """A value as jsonb text PostgreSQL accepts: NUL replaced in every string and key."""
    if value is None:
        return None
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"\\u0000" in text:  # rare: only then pay for a scrubbing pass
        text = orjson.dumps(_scrub(value), option=orjson.OPT_NON_STR_KEYS)
    return text.decode()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
