"""Fetch: stream a run's source, keep the raw payloads chunk by chunk, fan out the chunks.

Memory is bounded by the chunk size: items flow from the connector's generator, a batch
at a time through the unchanged-row filter (unchanged.py), into a buffer of `chunk_size`,
which is stored and handed on before the next one fills.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import structlog
from psycopg.rows import dict_row

from app.core.sources_config import SourceConfig
from workers.pipeline.fetch.unchanged import BATCH, Sifted, UnchangedRows
from workers.pipeline.finalize import fail_run, finalize_run
from workers.pipeline.gc_pause import paused_gc
from workers.pipeline.incremental import is_after
from workers.pipeline.raw import encode_item, store_chunk
from workers.sources.base import Extraction, FetchState, RawItem, RowBatch, SourceError, dotted_get
from workers.sources.registry import extract

log = structlog.get_logger(__name__)

EnqueueChunk = Callable[[int, int], None]
HEARTBEAT_EVERY_S = 5.0
# A chunk that fills slowly (a re-run storing only its changed rows) is stored once this
# many rows were read past it, times chunk_size, even if not full: the workers then
# normalise it while the fetch reads on, instead of all at the end of the run.
FLUSH_AFTER_CHUNKS_READ = 20
# Batches handed to the unchanged-row filter before the oldest one's result is taken: the
# database always has the next batch queued while this process reads the one after.
IN_FLIGHT = 2

_CLAIM_FETCH = """
UPDATE runs SET status = 'running', started_at = coalesce(started_at, now()), heartbeat_at = now(),
       fetch_attempts = fetch_attempts + 1
WHERE id = %s AND status IN ('queued', 'running') AND chunks_total IS NULL
RETURNING *
"""


@dataclass(frozen=True)
class FetchOutcome:
    chunks: int
    not_modified: bool
    status: str | None  # set when the run finished during the fetch stage


def _claim(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_CLAIM_FETCH, (run_id,))
        return cur.fetchone()


def load_state(conn: psycopg.Connection, source: str) -> FetchState:
    row = conn.execute(
        "SELECT value, etag, last_modified, file_hash FROM checkpoints WHERE source = %s", (source,)
    ).fetchone()
    conn.commit()
    if row is None:
        return FetchState()
    return FetchState(checkpoint=row[0], etag=row[1], last_modified=row[2], file_hash=row[3])


def fetch_run(
    conn: psycopg.Connection, run_id: int, *, enqueue_chunk: EnqueueChunk, max_attempts: int
) -> FetchOutcome | None:
    """Run the fetch stage of a run. None when there is nothing to do (already fetched/finished)."""
    run = _claim(conn, run_id)
    if run is None:
        return None
    if run["fetch_attempts"] > max_attempts:
        fail_run(conn, run_id, f"fetch gave up after {max_attempts} attempts (worker lost or timed out each time)")
        return FetchOutcome(chunks=0, not_modified=False, status="failed")
    source = SourceConfig(**run["config"])
    state = load_state(conn, source.name)
    try:
        extraction = extract(source, state)
        chunks = 0
        if not extraction.not_modified:
            chunks = _store_and_fan_out(conn, run_id, source, state, extraction, enqueue_chunk)
    except SourceError as exc:
        message = f"{type(exc).__name__}: {_redact(str(exc), source)}"
        fail_run(conn, run_id, message)
        log.warning("fetch_failed", run_id=run_id, source=source.name, error=message)
        return FetchOutcome(chunks=0, not_modified=False, status="failed")
    fetch_state = dict(extraction.new_state)
    with conn.transaction():
        conn.execute(
            "UPDATE runs SET chunks_total = %s, fetch_state = %s::jsonb, heartbeat_at = now() WHERE id = %s",
            (chunks, orjson.dumps(fetch_state).decode(), run_id),
        )
    status = finalize_run(conn, run_id)
    log.info("fetch_done", run_id=run_id, source=source.name, chunks=chunks, not_modified=extraction.not_modified)
    return FetchOutcome(chunks=chunks, not_modified=extraction.not_modified, status=status)


def _store_and_fan_out(
    conn: psycopg.Connection,
    run_id: int,
    source: SourceConfig,
    state: FetchState,
    extraction: Extraction,
    enqueue_chunk: EnqueueChunk,
) -> int:
    incremental = source.incremental_field
    pending: list[RawItem] = []  # read, not yet handed to the unchanged-row filter
    in_flight: deque[Sifted] = deque()  # batches being compared meanwhile, oldest first
    buffer: list[list[Any]] = []  # kept rows of the next chunk
    columns: list[str] | None = None  # of the tabular rows stored as values in it (raw.encode_item)
    skipped = 0  # rows left out since the last stored chunk; counted with the next one
    chunk_no = 0
    last_heartbeat = time.monotonic()

    def heartbeat() -> None:
        nonlocal last_heartbeat
        conn.execute("UPDATE runs SET heartbeat_at = now() WHERE id = %s", (run_id,))
        conn.commit()
        last_heartbeat = time.monotonic()

    def flush() -> None:
        nonlocal chunk_no, buffer, skipped, columns
        if store_chunk(conn, run_id=run_id, chunk_no=chunk_no, items=buffer, skipped=skipped, columns=columns):
            enqueue_chunk(run_id, chunk_no)
        heartbeat()
        chunk_no += 1
        buffer, skipped, columns = [], 0, None
        gc.collect(1)  # the collector is paused below: clear anything cyclic once per chunk

    def add(item: RawItem) -> None:
        nonlocal columns
        if columns is None and item.columns is not None:
            columns = item.columns  # rows of one file share one list
        buffer.append(encode_item(item, columns))
        if len(buffer) >= source.chunk_size:
            flush()

    def keep(sifted: Sifted) -> None:
        nonlocal skipped
        kept, dropped = sifted()
        skipped += dropped
        for item in kept:
            add(item)
        if buffer and skipped >= FLUSH_AFTER_CHUNKS_READ * source.chunk_size:
            flush()  # decided by the rows alone, so a re-driven fetch cuts the same chunks
        if time.monotonic() - last_heartbeat > HEARTBEAT_EVERY_S:
            heartbeat()  # a long stretch of unchanged rows stores no chunk

    def hand_on(batch: list[RawItem] | RowBatch) -> None:
        """Start comparing a batch; meanwhile keep what the one before the last left."""
        in_flight.append(unchanged.submit(batch))
        if len(in_flight) > IN_FLIGHT:
            keep(in_flight.popleft())

    # Compared a chunk's worth at a time (capped: two batches are held at once), so that a
    # slow upstream's first rows reach the workers about as early as without the filter.
    batch_size = min(source.chunk_size, BATCH)
    with paused_gc(), UnchangedRows(conn, run_id=run_id, source=source) as unchanged:
        items = extraction.items
        if unchanged.enabled and extraction.batches is not None:
            # A tabular source's rows, a batch at a time (from a local or already downloaded
            # file, so the batch size does not delay the first chunk). Same stream as items.
            for batch in extraction.batches:
                hand_on(batch)
            items = iter(())
        for item in items:
            if incremental and item.record is not None and state.checkpoint is not None:
                if not is_after(dotted_get(item.record, incremental), state.checkpoint):
                    continue  # at or before the checkpoint: already committed by an earlier run
            if not unchanged.enabled:
                add(item)
                continue
            pending.append(item)
            if len(pending) >= batch_size:
                hand_on(pending)
                pending = []
        hand_on(pending)
        while in_flight:
            keep(in_flight.popleft())
        if buffer or skipped:
            flush()  # even empty: the chunk carries the count of rows left out
    return chunk_no


def _redact(message: str, source: SourceConfig) -> str:
    for secret in source.secret_values():
        message = message.replace(secret, "***")
    return message
