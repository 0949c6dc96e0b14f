"""The run status vocabulary: the one place a run's statuses are spelled.

Python compares against these members; SQL receives them as bound parameters
(`status = ANY(%(active)s)`), never as literals, so a new status (or a renamed one)
is a change here and in a migration, nowhere else. The migrations spell them out (the CHECK constraint on runs.status)
because a migration must keep meaning what it meant when it was written.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's lifecycle: queued → running → succeeded | partial | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every record accepted
    PARTIAL = "partial"  # finished, with rejected records kept in rejected_records
    FAILED = "failed"  # stopped; counts are those of the chunks that committed
    CANCELLED = "cancelled"  # stopped on request; counts are those of the chunks that committed

    @classmethod
    def finished_ok(cls, *, rejected: int) -> RunStatus:
        """The status of a run that read its whole source: partial when any record was rejected."""
        return cls.PARTIAL if rejected else cls.SUCCEEDED


# Plain strings, so that every driver (psycopg, asyncpg) binds them as text[] alike.
ACTIVE: tuple[str, ...] = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
FINISHED: tuple[str, ...] = (
    RunStatus.SUCCEEDED.value, RunStatus.PARTIAL.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value
)
ALL: tuple[str, ...] = tuple(status.value for status in RunStatus)
