"""The order of a source's incremental_field: how its values compare, and how the checkpoint is kept.

Values are compared as what they mean, never as the text they came in: the source's
`types` entry for the field decides (timestamps as instants, numbers as numbers, dates
as dates, `str` as text). Without one, a value must read as a number or as a timestamp.
A value that has no place in that order (unparsable, not finite, an object) is refused
with UncomparableValue: the normaliser rejects its record, and it never becomes the
checkpoint.

The checkpoint is stored in one canonical JSON form per type (a JSON number; a UTC
timestamp `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`; `YYYY-MM-DD`; the text) and read back through
the same coercion, so a checkpoint stored in an earlier form (any UTC offset, a numeric
string) still loads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from workers.pipeline.normalize.coerce import COERCERS, CoercionError, is_empty, to_datetime

# A value's place in the order: every position of one source is of one Python type
# (ints and floats together), and positions of different types do not compare.
Position = int | float | datetime | date | str

AUTO = "auto"  # the field has no `types` entry


class UncomparableValue(ValueError):
    """The value has no place in the field's order."""


@dataclass(frozen=True)
class IncrementalOrder:
    field: str
    kind: str  # a coercion name from `types`, or AUTO

    @classmethod
    def of(cls, incremental_field: str | None, types: Mapping[str, str]) -> IncrementalOrder | None:
        if not incremental_field:
            return None
        return cls(incremental_field, types.get(incremental_field, AUTO))

    def position(self, value: Any) -> Position | None:
        """The value's place in the order; None when it is empty (no position, the record is kept)."""
        if is_empty(value):
            return None
        if self.kind == AUTO:
            return self._inferred(value)
        if self.kind not in _ORDERED:
            raise UncomparableValue(f"a {self.kind} field has no order")
        try:
            position = COERCERS[self.kind](value)
        except CoercionError as exc:
            raise UncomparableValue(str(exc)) from None
        return _in_utc(position) if isinstance(position, datetime) else position

    def _inferred(self, value: Any) -> Position:
        if isinstance(value, bool):
            raise UncomparableValue("a boolean has no order")
        if isinstance(value, (int, float)):
            return _finite(value)
        if isinstance(value, datetime):
            return _in_utc(to_datetime(value))
        if not isinstance(value, str):
            raise UncomparableValue("an object or list has no order")
        number = _number_in(value)
        if number is not None:
            return number
        try:
            return _in_utc(to_datetime(value))
        except CoercionError:
            raise UncomparableValue(
                f"{value!r} is neither a number nor a timestamp; declare types.{self.field} to order it"
                ' (as "str" to compare it as text)'
            ) from None

    def load(self, stored: Any) -> Position | None:
        """A stored checkpoint (or chunk maximum) as a position, in any form it was ever stored in."""
        return self.position(stored)

    @staticmethod
    def stored(position: Position) -> int | float | str:
        """The canonical JSON form of a position (also what since_param sends, as text)."""
        if isinstance(position, datetime):
            return position.isoformat().replace("+00:00", "Z")
        if isinstance(position, date):
            return position.isoformat()
        return position

    def is_past(self, value: Any, checkpoint: Position) -> bool:
        """The fetch stage's filter: False only for a value at or before the checkpoint. A
        value without a position, or one that cannot be placed, is kept for the normaliser
        to accept (no value) or reject (with its reason)."""
        try:
            position = self.position(value)
            return position is None or is_after(position, checkpoint)
        except UncomparableValue:
            return True


def is_after(position: Position, other: Position) -> bool:
    """position > other; UncomparableValue when they are of different kinds (a number and a timestamp)."""
    try:
        return bool(position > other)  # type: ignore[operator]
    except TypeError:
        raise UncomparableValue(
            f"{IncrementalOrder.stored(position)!r} cannot be compared with {IncrementalOrder.stored(other)!r}"
        ) from None


_ORDERED = frozenset({"int", "float", "datetime", "date", "str"})


def _finite(number: int | float) -> int | float:
    if isinstance(number, float) and not math.isfinite(number):
        raise UncomparableValue(f"{number!r} is not a finite number")
    return number


def _number_in(text: str) -> int | float | None:
    """The number a string reads as (an int when it is whole digits), else None; a
    non-finite one ('inf', 'NaN') is refused."""
    text = text.strip()
    if "_" in text:  # int() and float() accept '1_000'; a data file should not
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return _finite(number)


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise UncomparableValue(f"{moment.isoformat()!r} is out of the representable range in UTC") from None
