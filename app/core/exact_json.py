"""JSON without loss, at orjson's speed for ordinary data.

orjson is the codec everywhere, but it is not exact for every valid JSON document: it
decodes integers beyond 64 bits as floats (ids 2**64 and 2**64 + 1 become one number),
refuses numbers that overflow a double (1e400), refuses to encode integers beyond 64 bits
or anything nested deeper than 254 levels, and encodes a non-finite float as null. The
standard library's json is exact for all of these (Python ints are unbounded), and several
times slower. So each function here uses orjson, and falls back to the standard library
only for what orjson would refuse or round.

A number that no double holds (1e400; NaN and Infinity, which are not JSON but which
Python's json reads) is decoded as a `NonFinite`: a float subclass, which orjson refuses
to encode. Anything that encodes a record holding one therefore takes the slow path,
where the normaliser rejects the record naming the field, and a raw payload keeps it
as NaN/Infinity (read back as NonFinite), never as null.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import orjson

# The deepest JSON stored in a jsonb column (records' data, rejections' raw payloads): every
# such value is served inside the API's envelopes (a page of rejections puts a raw payload
# three levels down), and the encoders on the way (orjson, pydantic) stop at 254 levels.
MAX_DEPTH = 250

# Integers of 19 digits or more may lie beyond 64 bits, which orjson would decode as floats.
_LONG_DIGIT_RUN = b"0" * 19
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")

# orjson never writes leading whitespace: a payload that starts with it was written by the
# standard library's encoder (exact, slower) and is read back by its decoder.
_STDLIB_MARK = b" "


class NonFinite(float):
    """A number no double can hold (1e400 overflows) or that JSON has no spelling for (NaN,
    Infinity). orjson refuses to encode it, so it is never written as null."""

    __slots__ = ()


def exact_float(text: str) -> float:
    number = float(text)
    return number if number - number == 0 else NonFinite(number)


def exact_constant(name: str) -> NonFinite:
    return NonFinite(name)  # "NaN", "Infinity", "-Infinity": float() reads all three


def _iso(value: Any) -> Any:
    if isinstance(value, (datetime, date)):  # as orjson writes them
        return value.isoformat()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def loads(data: bytes) -> Any:
    """Decode a JSON document exactly: big integers as ints, out-of-range numbers as
    NonFinite. Raises ValueError (json.JSONDecodeError, UnicodeDecodeError) for what is
    not JSON, RecursionError for a document nested deeper than Python's recursion limit."""
    if _LONG_DIGIT_RUN not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # perhaps only orjson refuses it (1e400, NaN, a byte order mark): the exact decoder decides
    return json.loads(data, parse_float=exact_float, parse_constant=exact_constant)


def dumps(value: Any, *, option: int = 0) -> bytes:
    """Encode with orjson, or exactly with the standard library where orjson refuses (big
    integers, deep nesting, NonFinite written as NaN/Infinity; lone surrogates escaped).
    A payload from the fallback starts with a space, which `loads_payload` recognises.
    Raises RecursionError past Python's recursion limit (see nesting_exceeds)."""
    try:
        return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return exact_dumps(value, sort_keys=bool(option & orjson.OPT_SORT_KEYS))


def exact_dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """The fallback of `dumps` on its own, for a caller that knows orjson refuses the value."""
    return _STDLIB_MARK + stdlib_dumps(value, sort_keys=sort_keys).encode()


def stdlib_dumps(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """The standard library's compact encoding, with datetimes written as orjson writes them."""
    return json.dumps(value, sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=(",", ":"), default=_iso)


def loads_payload(payload: bytes) -> Any:
    """Decode what `dumps` wrote: the fast decoder for orjson's output, the exact one for
    the fallback's (which may hold big integers and NonFinite)."""
    if payload[:1] == _STDLIB_MARK:
        return json.loads(payload, parse_float=exact_float, parse_constant=exact_constant)
    return orjson.loads(payload)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` levels (the value itself is level 1).
    Iterative: it answers for any depth without recursing."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if type(current) is dict:
            children: Any = current.values()
        elif type(current) is list:
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def first_non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NonFinite (or non-finite float) inside `value`, or None.
    Call only on values whose nesting is within Python's recursion limit."""
    if isinstance(value, float):
        return path if value - value != 0 else None
    if type(value) is dict:
        for key, child in value.items():
            found = first_non_finite(child, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif type(value) is list:
        for index, child in enumerate(value):
            found = first_non_finite(child, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None
