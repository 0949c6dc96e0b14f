"""NUL characters, which PostgreSQL text and jsonb cannot hold, replaced before writing."""

from __future__ import annotations

from typing import Any

import orjson

_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _scrub(value: Any) -> Any:
    """Replace NUL characters, which PostgreSQL text and jsonb cannot hold."""
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"\\u0000" in text:  # rare: only then pay for a scrubbing pass
        text = orjson.dumps(_scrub(value), option=orjson.OPT_NON_STR_KEYS)
    return text.decode()


def _strip_nul(text: str | None) -> str | None:
    return text.replace(_NUL, _REPLACEMENT) if text and _NUL in text else text
