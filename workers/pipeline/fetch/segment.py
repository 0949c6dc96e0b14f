"""A fetch in segments: no fetch task reads for long, and a lost one costs one segment.

A run's fetch is a chain of tasks. Each claims the run's fetch lease, opens the source at
the position the previous one committed (or at the top), reads until its budget is spent
(SegmentBudget: FETCH_SEGMENT_S seconds, at most a quarter of TASK_TIMEOUT_S, or
FETCH_SEGMENT_CHUNKS chunks) and stops at the next Boundary its connector offers. It then
commits, in ONE transaction with the last chunk it stored, the position after that chunk,
its progress and the ids it kept (repeats.py), releases the lease and sends a
continuation task. So:

- no task comes near the time limit, and broker redelivery never races a live fetch;
- a killed worker, a restarted broker or a re-driven fetch re-reads at most the segment
  that was under way: the next attempt starts at the last committed position, with the
  same chunk numbers, so the chunks it stores again are the ones already kept
  (raw.store_chunk);
- a long source takes turns with other sources' fetches on the fetch queue.

The lease (runs.fetch_lease) names the one task allowed to write for the run, and
runs.fetch_holder the worker process running it. A task claims it when it is free, when
its task has not shown a heartbeat for TASK_TIMEOUT_S, or when its process is dead
(workers/liveness.py); the reconciler frees it then too, as it re-drives the fetch. Every chunk a task stores
and every position it commits first checks that it still holds the lease, in the same
transaction: a task that lost it (hung past the timeout, then woke) stops there, without
writing (RunStopped), so two tasks never interleave the chunks of one run.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from app.core.run_status import ACTIVE, RunStatus
from workers.liveness import DEAD_AFTER_S, HOLDER_DEAD_SQL
from workers.pipeline.fetch.repeats import KeptIds

_CLAIM = f"""
UPDATE runs SET status = %(running_status)s, started_at = coalesce(started_at, now()), heartbeat_at = now(),
       fetch_attempts = fetch_attempts + 1, segment_attempts = segment_attempts + 1, fetch_lease = %(lease)s,
       fetch_holder = %(holder)s
WHERE id = %(run_id)s AND status = ANY(%(active)s) AND chunks_total IS NULL
  AND (fetch_lease IS NULL OR fetch_lease = %(lease)s
       OR coalesce(heartbeat_at, created_at) < now() - make_interval(secs => %(timeout)s)
       OR (fetch_holder IS NOT NULL AND {HOLDER_DEAD_SQL.format(holder="runs.fetch_holder", dead_after=DEAD_AFTER_S)}))
RETURNING *
"""

_HOLD = """
UPDATE runs SET heartbeat_at = now(), fetch_progress = coalesce(%(progress)s::jsonb, fetch_progress)
WHERE id = %(run_id)s AND fetch_lease = %(lease)s AND status = ANY(%(active)s)
RETURNING 1
"""

_END_SEGMENT = """
UPDATE runs SET fetch_position = %(position)s::jsonb, fetch_state = %(state)s::jsonb,
       fetch_progress = %(progress)s::jsonb, fetch_lease = NULL, segment_attempts = 0,
       fetch_segments = fetch_segments + 1, heartbeat_at = now()
WHERE id = %(run_id)s AND fetch_lease = %(lease)s AND status = ANY(%(active)s)
RETURNING 1
"""

_END_FETCH = """
UPDATE runs SET chunks_total = %(chunks)s, fetch_state = %(state)s::jsonb, fetch_progress = %(progress)s::jsonb,
       fetch_position = NULL, fetch_lease = NULL, segment_attempts = 0, fetch_segments = fetch_segments + 1,
       heartbeat_at = now()
WHERE id = %(run_id)s AND fetch_lease = %(lease)s AND status = ANY(%(active)s)
RETURNING 1
"""

_SAVE_KEPT = """
INSERT INTO fetch_kept_ids (run_id, kept) VALUES (%(run_id)s, %(kept)s)
ON CONFLICT (run_id) DO UPDATE SET kept = excluded.kept
"""


class RunStopped(Exception):
    """The run ended (cancelled, or failed by the reconciler) or another fetch task took
    its lease while this one read on: this task must stop without writing."""


@dataclass(frozen=True)
class SegmentBudget:
    """How much one fetch task reads before it hands on: whichever comes first."""

    seconds: float
    chunks: int

    @classmethod
    def unlimited(cls) -> SegmentBudget:
        return cls(seconds=float("inf"), chunks=2**62)


class SegmentClock:
    """Whether the running segment has spent its budget (checked at each Boundary)."""

    def __init__(self, budget: SegmentBudget, first_chunk: int):
        self.budget = budget
        self.first_chunk = first_chunk
        self.started = time.monotonic()

    def spent(self, next_chunk: int) -> bool:
        return (
            next_chunk - self.first_chunk >= self.budget.chunks
            or time.monotonic() - self.started >= self.budget.seconds
        )


@dataclass(frozen=True)
class Lease:
    """A fetch task's right to write for its run (see the module notes)."""

    run_id: int
    token: uuid.UUID

    def hold(self, conn: psycopg.Connection, progress: dict[str, Any] | None = None) -> None:
        """Within the caller's transaction: show a heartbeat (and the progress), or raise
        RunStopped when the run ended or another task holds the lease."""
        held = conn.execute(
            _HOLD,
            {
                "run_id": self.run_id,
                "lease": self.token,
                "active": list(ACTIVE),
                "progress": None if progress is None else orjson.dumps(progress).decode(),
            },
        ).fetchone()
        if held is None:
            raise RunStopped(f"run {self.run_id} is no longer active, or another fetch task holds it")

    def end_segment(
        self,
        conn: psycopg.Connection,
        *,
        position: dict[str, Any],
        state: dict[str, Any],
        progress: dict[str, Any],
        kept: KeptIds | None,
    ) -> None:
        """Within the caller's transaction (the one storing the segment's last chunk): commit
        where the next segment starts, and free the lease for the continuation task."""
        self._update(conn, _END_SEGMENT, position=orjson.dumps(position).decode(), state=state, progress=progress)
        if kept is not None:
            conn.execute(_SAVE_KEPT, {"run_id": self.run_id, "kept": dump_kept(kept)})

    def end_fetch(
        self, conn: psycopg.Connection, *, chunks: int, state: dict[str, Any], progress: dict[str, Any]
    ) -> None:
        """Within the caller's transaction: the fetch read the whole source in `chunks` chunks."""
        self._update(conn, _END_FETCH, chunks=chunks, state=state, progress=progress)
        conn.execute("DELETE FROM fetch_kept_ids WHERE run_id = %s", (self.run_id,))

    def _update(self, conn: psycopg.Connection, sql: str, *, state: dict[str, Any], progress: dict[str, Any],
                **values: Any) -> None:
        done = conn.execute(
            sql,
            {
                "run_id": self.run_id,
                "lease": self.token,
                "active": list(ACTIVE),
                "state": orjson.dumps(state).decode(),
                "progress": orjson.dumps(progress).decode(),
                **values,
            },
        ).fetchone()
        if done is None:
            raise RunStopped(f"run {self.run_id} is no longer active, or another fetch task holds it")


def claim(
    conn: psycopg.Connection,
    run_id: int,
    *,
    timeout_s: float,
    holder: uuid.UUID | None = None,
    token: uuid.UUID | None = None,
) -> tuple[Lease, dict[str, Any]] | None:
    """Take the run's fetch lease for the worker process `holder` (workers/liveness.py); None
    when the fetch is done, the run ended, or a live task holds it. A task retried after an
    error presents the `token` it held, and takes its own lease back at once."""
    lease = Lease(run_id, token or uuid.uuid4())
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _CLAIM,
            {
                "run_id": run_id,
                "lease": lease.token,
                "running_status": RunStatus.RUNNING,
                "active": list(ACTIVE),
                "timeout": timeout_s,
                "holder": holder,
            },
        )
        run = cur.fetchone()
    return None if run is None else (lease, run)


def load_kept(conn: psycopg.Connection, run_id: int) -> KeptIds:
    """The ids the run's earlier segments kept (empty when none did)."""
    row = conn.execute("SELECT kept FROM fetch_kept_ids WHERE run_id = %s", (run_id,)).fetchone()
    conn.commit()
    return KeptIds() if row is None else load_kept_bytes(row[0])


# A set of ids as length-prefixed UTF-8 (surrogatepass: an id from JSON may hold a lone
# surrogate), or the table's bytes; zlib, because a table of few kept ids is mostly zeros.
_SET, _TABLE = b"S", b"T"


def dump_kept(kept: KeptIds) -> bytes:
    snapshot = kept.snapshot()
    if isinstance(snapshot, bytes):
        return zlib.compress(_TABLE + snapshot, 1)
    encoded = [key.encode("utf-8", "surrogatepass") for key in snapshot]
    return zlib.compress(_SET + b"".join(len(e).to_bytes(4, "big") + e for e in encoded), 1)


def load_kept_bytes(data: bytes) -> KeptIds:
    raw = zlib.decompress(data)
    if raw[:1] == _TABLE:
        return KeptIds.restore(raw[1:])
    ids: set[str] = set()
    at = 1
    while at < len(raw):
        size = int.from_bytes(raw[at : at + 4], "big")
        ids.add(raw[at + 4 : at + 4 + size].decode("utf-8", "surrogatepass"))
        at += 4 + size
    return KeptIds.restore(ids)
