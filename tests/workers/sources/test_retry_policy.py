"""RetryPolicy and Retry-After parsing: the rules, without a network."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from workers.sources.retry import RetryPolicy, parse_retry_after

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 0 ", 0.0), ("120", 120.0), (None, None), ("", None), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_http_date_in_the_future() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)  # "Thu, 26 Nov 2026 12:01:30 GMT"
    assert parse_retry_after(header, now=NOW) == pytest.approx(90.0)


def test_retry_after_obsolete_date_formats_are_accepted() -> None:
    assert parse_retry_after("Thursday, 26-Nov-26 12:00:10 GMT", now=NOW) == pytest.approx(10.0)  # RFC 850
    assert parse_retry_after("Thu Nov 26 12:00:20 2026", now=NOW) == pytest.approx(20.0)  # asctime


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), now=NOW) == 0.0


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, jitter=0.5, rng=random.Random(1))
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        for _ in range(50):
            delay = policy.backoff_s(failures)
            assert ceiling * 0.5 <= delay <= ceiling


def test_jitter_actually_varies_delays() -> None:
    policy = RetryPolicy(base_delay_s=1.0, rng=random.Random(2))
    assert len({round(policy.backoff_s(3), 6) for _ in range(20)}) > 1


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay_s(1, None, 0.0) is not None
    assert policy.delay_s(2, None, 0.0) is not None
    assert policy.delay_s(3, None, 0.0) is None


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=30)
    assert policy.delay_s(1, 5.0, 0.0) == 5.0


def test_retry_after_longer_than_max_delay_is_not_slept_through() -> None:
    assert RetryPolicy(max_delay_s=30).delay_s(1, 3600.0, 0.0) is None


def test_total_time_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=1.0, max_total_s=10.0, jitter=0.0)
    assert policy.delay_s(1, None, 5.0) == 1.0
    assert policy.delay_s(1, None, 9.5) is None
    assert policy.delay_s(1, 3.0, 8.0) is None
