"""When and how long to wait before retrying a transient upstream failure.

Kept apart from the HTTP code so the policy is a plain value: production uses the
defaults, tests inject a fast one, and the rules (jittered exponential backoff, never
sooner than Retry-After, bounded attempts and total time) are testable without a network.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff.

    `max_attempts` counts every try, the first included. `max_total_s` bounds the time
    spent on one request across all its attempts, so a flapping upstream cannot hold a
    worker past the task time limit. A Retry-After longer than `max_delay_s` is not slept
    through: the error is raised at once, carrying `retry_after_s`, for the caller to
    reschedule instead of blocking a worker.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_total_s: float = 120.0
    jitter: float = 0.5  # a delay is drawn from [d * (1 - jitter), d]
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff_s(self, failures: int) -> float:
        """The jittered delay after the `failures`-th consecutive failure (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1))
        return ceiling * (1 - self.jitter * self.rng.random())

    def delay_s(self, failures: int, retry_after_s: float | None, elapsed_s: float) -> float | None:
        """How long to sleep before the next attempt, or None when retrying must stop."""
        if failures >= self.max_attempts:
            return None
        if retry_after_s is not None and retry_after_s > self.max_delay_s:
            return None
        delay = self.backoff_s(failures)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        if elapsed_s + delay > self.max_total_s:
            return None
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an offset-less parse means "-0000"
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
