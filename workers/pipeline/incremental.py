"""Ordering of incremental-field values (ids, counters, ISO timestamps).

Numbers (or numeric strings) compare as numbers, everything else as text; ISO 8601
timestamps in one format therefore compare correctly as text.
"""

from __future__ import annotations

from typing import Any


def _key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    text = str(value)
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def is_after(value: Any, checkpoint: Any) -> bool:
    """True when `value` is past the checkpoint (or there is no checkpoint yet)."""
    if checkpoint is None:
        return True
    if value is None:
        return True  # unknown position: keep it, the upsert absorbs any overlap
    a, b = _key(value), _key(checkpoint)
    if a[0] != b[0]:
        return str(value) > str(checkpoint)
    return a[1] > b[1]


def greatest(current: Any, candidate: Any) -> Any:
    """The larger of two incremental values, ignoring None."""
    if candidate is None:
        return current
    if current is None:
        return candidate
    return candidate if is_after(candidate, current) else current
