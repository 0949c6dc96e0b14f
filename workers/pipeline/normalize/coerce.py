"""Type coercions named in sources.toml `[types]`: int | float | bool | datetime | date | str.

Each coercer takes the raw value and returns the typed value or raises CoercionError.
Empty strings become None before any coercion (CONTRACT: empty strings in typed fields
become null).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any


class CoercionError(ValueError):
    """The value cannot be read as the declared type."""


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CoercionError("boolean is not an int")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise CoercionError(f"{value!r} is not a whole number")
    text = str(value).strip()
    if "_" in text:  # int() accepts '1_000'; a data file should not
        raise CoercionError(f"{value!r} is not an int")
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise CoercionError(f"{value!r} is not an int") from None
        if number.is_integer():
            return int(number)
        raise CoercionError(f"{value!r} is not a whole number") from None


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise CoercionError("boolean is not a float")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CoercionError(f"{value!r} is not a number") from None
    if math.isnan(number) or math.isinf(number):
        raise CoercionError(f"{value!r} is not a finite number")  # JSON cannot carry NaN/inf
    return number


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CoercionError(f"{value!r} is not a boolean (true/false/1/0/yes/no)")


def to_datetime(value: Any) -> datetime:
    """ISO 8601 or RFC 2822 (RSS pubDate); naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            parsed = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise CoercionError(f"{value!r} is not a valid timestamp") from None
    else:
        text = str(value).strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            try:
                parsed = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                raise CoercionError(f"{value!r} is not a datetime (ISO 8601 or RFC 2822)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def to_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise CoercionError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def to_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise CoercionError("an object or list is not a string")
    return str(value)


COERCERS: dict[str, Callable[[Any], Any]] = {
    "int": to_int,
    "float": to_float,
    "bool": to_bool,
    "datetime": to_datetime,
    "date": to_date,
    "str": to_str,
}


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


# --- nullable coercers: is_empty + coercion in one call, for the per-record loop ---------------
# Each returns None for an empty value and otherwise exactly what the coercer above returns
# (or raises what it raises); the common case, a clean string from a CSV, takes a short path.

_BOOL_WORDS = dict.fromkeys(_TRUE, True) | dict.fromkeys(_FALSE, False)


def int_or_none(value: Any) -> int | None:
    if type(value) is str:
        if value.isdigit() and value.isascii():
            return int(value)
        if not value or value.isspace():
            return None
    elif value is None:
        return None
    return to_int(value)


def float_or_none(value: Any) -> float | None:
    if type(value) is str:
        if not value or value.isspace():
            return None
        try:
            number = float(value)
        except ValueError:
            return to_float(value)  # raises the coercion error
        return number if math.isfinite(number) else to_float(value)
    if value is None:
        return None
    return to_float(value)


def bool_or_none(value: Any) -> bool | None:
    if type(value) is str:
        word = _BOOL_WORDS.get(value)
        if word is not None:
            return word
        if not value or value.isspace():
            return None
    elif value is None:
        return None
    return to_bool(value)


def nullable(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def coerce_or_none(value: Any) -> Any:
        return None if is_empty(value) else coerce(value)

    return coerce_or_none


NULLABLE_COERCERS: dict[str, Callable[[Any], Any]] = {
    "int": int_or_none,
    "float": float_or_none,
    "bool": bool_or_none,
    "datetime": nullable(to_datetime),
    "date": nullable(to_date),
    "str": nullable(to_str),
}
