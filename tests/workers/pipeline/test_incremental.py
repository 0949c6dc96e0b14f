"""The incremental field's order: values compared as their type, the checkpoint's canonical form.

Pure functions; the end-to-end behaviour (a real worker, HTTP server and CSV files) is in
tests/workers/test_incremental_e2e.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from workers.pipeline.finalize import advanced_checkpoint
from workers.pipeline.incremental import IncrementalOrder, UncomparableValue, is_after


def order(kind: str | None) -> IncrementalOrder:
    made = IncrementalOrder.of("v", {} if kind is None else {"v": kind})
    assert made is not None
    return made


def test_timestamps_compare_as_instants_whatever_their_offset() -> None:
    for kind in ("datetime", None):
        checkpoint = order(kind).position("2026-01-01T10:00:00Z")
        assert checkpoint is not None
        assert order(kind).is_past("2026-01-01T09:30:00-03:00", checkpoint)  # 12:30 UTC
        assert not order(kind).is_past("2026-01-01T11:00:00+05:00", checkpoint)  # 06:00 UTC
        assert not order(kind).is_past("2026-01-01T07:00:00-03:00", checkpoint)  # the same instant


def test_numbers_compare_as_numbers_exactly() -> None:
    for kind in ("int", None):
        assert is_after(order(kind).position("10"), order(kind).position("9"))  # type: ignore[arg-type]
        big = 2**53
        assert is_after(order(kind).position(str(big + 1)), order(kind).position(big))  # type: ignore[arg-type]
    assert is_after(order("float").position("10"), order("float").position("9.5"))  # type: ignore[arg-type]
    assert order(None).position(" 1e3 ") == 1000.0


@pytest.mark.parametrize("kind", ["int", "float", "datetime", "date", None])
@pytest.mark.parametrize("poison", ["inf", "NaN", "-Infinity", "later", float("inf"), float("nan"), {"a": 1}, [1]])
def test_a_value_with_no_place_in_the_order_is_refused(kind: str | None, poison: object) -> None:
    with pytest.raises(UncomparableValue):
        order(kind).position(poison)


def test_text_is_compared_as_text_only_when_declared_str() -> None:
    assert order("str").position("later") == "later"
    assert is_after(order("str").position("b"), order("str").position("a10"))  # type: ignore[arg-type]
    with pytest.raises(UncomparableValue, match='declare types.v'):
        order(None).position("01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_booleans_and_empty_values() -> None:
    with pytest.raises(UncomparableValue):
        order(None).position(True)
    for kind in ("int", "datetime", "str", None):
        assert order(kind).position("") is None and order(kind).position(None) is None
        assert order(kind).is_past(None, 5 if kind in ("int", None) else "x")  # no value: kept


def test_a_number_and_a_timestamp_do_not_compare() -> None:
    with pytest.raises(UncomparableValue):
        is_after(order(None).position(5), order(None).position("2026-01-01T00:00:00Z"))  # type: ignore[arg-type]
    checkpoint = order(None).position("2026-01-01T00:00:00Z")
    assert checkpoint is not None
    assert order(None).is_past(5, checkpoint)  # kept: the normaliser decides


@pytest.mark.parametrize(
    ("kind", "value", "stored"),
    [
        ("datetime", "2026-01-01T09:30:00-03:00", "2026-01-01T12:30:00Z"),
        ("datetime", "2026-01-01T09:30:00.250+01:00", "2026-01-01T08:30:00.250000Z"),
        ("datetime", "Thu, 01 Jan 2026 09:30:00 -0300", "2026-01-01T12:30:00Z"),
        ("datetime", 1767225600, "2026-01-01T00:00:00Z"),
        (None, "2026-01-01T09:30:00-03:00", "2026-01-01T12:30:00Z"),
        ("date", "2026-01-02", "2026-01-02"),
        ("int", "42", 42),
        ("int", str(2**63 + 1), 2**63 + 1),
        ("float", "1.5", 1.5),
        (None, "42", 42),
        (None, 1.5, 1.5),
        ("str", 42, "42"),
    ],
)
def test_the_checkpoint_is_stored_in_one_canonical_form_per_type(
    kind: str | None, value: object, stored: object
) -> None:
    position = order(kind).position(value)
    assert position is not None
    assert order(kind).stored(position) == stored
    assert order(kind).load(stored) == position  # read back as the same type


@pytest.mark.parametrize(
    ("kind", "old", "position"),
    [
        ("datetime", "2026-01-01T07:00:00-03:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        ("datetime", "2026-01-01T10:00:00+00:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        ("datetime", "2026-01-01T10:00:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        (None, "2026-01-01T10:00:00Z", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        (None, "50", 50),
        ("int", "50", 50),
        ("float", 50, 50.0),
        ("date", "2026-01-02", date(2026, 1, 2)),
    ],
)
def test_checkpoints_stored_in_the_earlier_form_still_load(kind: str | None, old: object, position: object) -> None:
    assert order(kind).load(old) == position


def test_the_checkpoint_only_moves_forward_and_never_to_a_poison() -> None:
    by_number = order(None)
    assert advanced_checkpoint(by_number, 9, [10, 3], source="s") == 10
    assert advanced_checkpoint(by_number, "50", [], source="s") == 50  # rewritten in the canonical form
    assert advanced_checkpoint(by_number, 9, [], source="s") == 9
    assert advanced_checkpoint(by_number, None, [], source="s") is None
    # A checkpoint stored by the release that compared raw text can be a poison: it is replaced.
    assert advanced_checkpoint(by_number, "later", [4], source="s") == 4
    # A run whose values cannot be compared with the checkpoint leaves it where it was.
    assert advanced_checkpoint(by_number, 9, ["2026-01-01T00:00:00Z"], source="s") == 9
    by_time = order("datetime")
    assert advanced_checkpoint(
        by_time, "2026-01-01T10:00:00Z", ["2026-01-01T09:30:00-03:00", "2026-01-01T11:00:00+05:00"], source="s"
    ) == "2026-01-01T12:30:00Z"


def test_an_out_of_range_instant_is_refused() -> None:
    with pytest.raises(UncomparableValue, match="range"):
        order("datetime").position("0001-01-01T00:00:00+05:00")
