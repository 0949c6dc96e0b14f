"""The normalize-and-upsert stage for one chunk: load raw, normalize, write, finalize."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from app.core.sources_config import SourceConfig
from workers.pipeline.finalize import fail_run, finalize_run
from workers.pipeline.gc_pause import paused_gc
from workers.pipeline.normalize.drift import load_known
from workers.pipeline.normalize.normalizer import Normalizer
from workers.pipeline.raw import load_chunk
from workers.pipeline.upsert import ChunkCounts, write_chunk


@dataclass(frozen=True)
class ChunkOutcome:
    counts: ChunkCounts | None  # None: already committed, or the run is no longer active
    run_status: str | None  # set when this chunk finished the run


def start_attempt(
    conn: psycopg.Connection, run_id: int, chunk_no: int, max_attempts: int, holder: uuid.UUID | None = None
) -> bool:
    """Count a delivery of this chunk, by the worker process `holder` (workers/liveness.py);
    fail the run and return False past the limit.

    A copy of a chunk that already committed (a redelivery, or a re-drive of a chunk that
    was only waiting in a long queue) is not an attempt: it returns False uncounted.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE raw_chunks c SET attempts = attempts + 1, enqueued_at = now(), claimed_by = %s"
            " WHERE run_id = %s AND chunk_no = %s AND NOT EXISTS"
            " (SELECT 1 FROM chunk_ledger l WHERE l.run_id = c.run_id AND l.chunk_no = c.chunk_no)"
            " RETURNING attempts, last_error",
            (holder, run_id, chunk_no),
        ).fetchone()
    if row is None:
        return False
    attempts, last_error = row
    if attempts > max_attempts:
        fail_run(conn, run_id, f"chunk {chunk_no} failed after {max_attempts} attempts: {last_error or 'worker lost'}")
        return False
    return True


def record_failure(conn: psycopg.Connection, run_id: int, chunk_no: int, error: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE raw_chunks SET last_error = %s WHERE run_id = %s AND chunk_no = %s",
            (error[:2000], run_id, chunk_no),
        )


def process_chunk(conn: psycopg.Connection, run_id: int, chunk_no: int) -> ChunkOutcome:
    """Process one chunk exactly once, however often it is delivered."""
    started = time.monotonic()
    with paused_gc():
        row = conn.execute("SELECT source, config FROM runs WHERE id = %s", (run_id,)).fetchone()
        stored = load_chunk(conn, run_id=run_id, chunk_no=chunk_no)
        conn.commit()
        if row is None or stored is None:
            return ChunkOutcome(counts=None, run_status=None)
        source_name, config = row
        normalized = _normalizer(conn, run_id, source_name, config).normalize_chunk(stored.items)
        counts = write_chunk(
            conn, run_id=run_id, chunk_no=chunk_no, source=source_name, fetched=len(stored.items),
            skipped=stored.skipped, chunk=normalized, started=started,
        )
        del stored, normalized
    return ChunkOutcome(counts=counts, run_status=finalize_run(conn, run_id) if counts else None)


# The Normalizers of the runs this process worked on last. A run's config never changes:
# building its Normalizer once per run, not once per chunk, saves a validation and the
# compilation. Keyed by the config as well as the run id, because ids restart after a
# reset. With on_drift = "reject" the known schema is read for every chunk: it changes as
# chunks commit.
_NORMALIZERS: dict[tuple[int, bytes], Normalizer] = {}
_NORMALIZERS_KEPT = 4


def _normalizer(conn: psycopg.Connection, run_id: int, source_name: str, config: dict[str, Any]) -> Normalizer:
    key = (run_id, orjson.dumps(config, option=orjson.OPT_SORT_KEYS))
    normalizer = _NORMALIZERS.get(key)
    if normalizer is not None:
        return normalizer
    source = SourceConfig(**config)
    if source.on_drift == "reject":
        known = load_known(conn, source_name)
        conn.commit()
        return Normalizer(source, known)
    normalizer = _NORMALIZERS[key] = Normalizer(source)
    while len(_NORMALIZERS) > _NORMALIZERS_KEPT:
        del _NORMALIZERS[next(iter(_NORMALIZERS))]  # the oldest
    return normalizer
