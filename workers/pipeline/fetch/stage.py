"""Fetch: stream a run's source, keep the raw payloads chunk by chunk, fan out the chunks.

Memory is bounded by the chunk size: items flow from the connector's generator, a batch
at a time through the unchanged-row filter (sifter.py, unchanged.py), into a buffer of
`chunk_size` (buffer.py), which is stored and handed on before the next one fills.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
import psycopg
import structlog
from psycopg.rows import dict_row

from app.core.redaction import redact
from app.core.run_status import ACTIVE, RunStatus
from app.core.sources_config import SourceConfig
from workers.pipeline.fetch.buffer import ChunkBuffer, EnqueueChunk, RunStopped
from workers.pipeline.fetch.sifter import Sifter
from workers.pipeline.fetch.unchanged import UnchangedRows
from workers.pipeline.finalize import fail_run, finalize_run
from workers.pipeline.gc_pause import paused_gc
from workers.pipeline.incremental import IncrementalOrder, Position, UncomparableValue
from workers.sources.base import Extraction, FetchState, SourceError, dotted_get
from workers.sources.registry import extract

log = structlog.get_logger(__name__)

_CLAIM_FETCH = """
UPDATE runs SET status = %(running_status)s, started_at = coalesce(started_at, now()), heartbeat_at = now(),
       fetch_attempts = fetch_attempts + 1
WHERE id = %(run_id)s AND status = ANY(%(active)s) AND chunks_total IS NULL
RETURNING *
"""


@dataclass(frozen=True)
class FetchOutcome:
    chunks: int
    not_modified: bool
    status: str | None  # set when the run finished during the fetch stage


def _claim(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_CLAIM_FETCH, {"run_id": run_id, "running_status": RunStatus.RUNNING, "active": list(ACTIVE)})
        return cur.fetchone()


# The validators (ETag, Last-Modified, file hash) let a run skip a source that did not
# change since the run that stored them. Only while that run is the source's last one: a
# later run that did not finish (failed, or still unfinished when this one started) may
# have written part of another version of the source, which an unchanged source must
# now overwrite. The run that stored them finished cleanly (finalize.py).
_LOAD_STATE = """
SELECT c.value, c.etag, c.last_modified, c.file_hash,
       NOT EXISTS (SELECT 1 FROM runs r WHERE r.source = c.source AND r.id > coalesce(c.run_id, 0)
                   AND r.id <> %(run_id)s) AS validators_hold
FROM checkpoints c WHERE c.source = %(source)s
"""


def load_state(conn: psycopg.Connection, source: str, run_id: int) -> FetchState:
    """What the source's last successful run left for run `run_id` (see _LOAD_STATE)."""
    row = conn.execute(_LOAD_STATE, {"source": source, "run_id": run_id}).fetchone()
    conn.commit()
    if row is None:
        return FetchState()
    value, etag, last_modified, file_hash, validators_hold = row
    if not validators_hold:
        return FetchState(checkpoint=value)
    return FetchState(checkpoint=value, etag=etag, last_modified=last_modified, file_hash=file_hash)


# No other run of the source, and no record of it that another run wrote (runs may be
# removed by hand; records written by an earlier attempt of this run's fetch are its own).
_FIRST_RUN = """
SELECT CASE WHEN EXISTS (SELECT 1 FROM runs WHERE source = %(source)s AND id <> %(run_id)s) THEN false
            ELSE NOT EXISTS (SELECT 1 FROM records WHERE source = %(source)s
                             AND last_run_id IS DISTINCT FROM %(run_id)s) END
"""


def _is_first_run(conn: psycopg.Connection, source: str, run_id: int) -> bool:
    """Whether the run is the source's first: nothing another run stored for it to be
    compared with, so no repeated id needs flagging (fetch/repeats.py)."""
    row = conn.execute(_FIRST_RUN, {"source": source, "run_id": run_id}).fetchone()
    conn.commit()
    return row is not None and bool(row[0])


def loaded_checkpoint(order: IncrementalOrder, stored: Any, *, source: str) -> Position | None:
    """The stored checkpoint as a position of the field's order. One that cannot be read as
    that type (stored by a release that compared raw text, or before `types` changed) counts
    as none: the run fetches everything, the upsert absorbs the overlap, and the run's
    greatest value replaces it."""
    if stored is None:
        return None
    try:
        return order.load(stored)
    except UncomparableValue as exc:
        log.warning("checkpoint_unreadable", source=source, checkpoint=stored, kind=order.kind, error=str(exc))
        return None


def fetch_run(
    conn: psycopg.Connection, run_id: int, *, enqueue_chunk: EnqueueChunk, max_attempts: int
) -> FetchOutcome | None:
    """Run the fetch stage of a run. None when there is nothing to do (already fetched/finished)."""
    run = _claim(conn, run_id)
    if run is None:
        return None
    if run["fetch_attempts"] > max_attempts:
        fail_run(conn, run_id, f"fetch gave up after {max_attempts} attempts (worker lost or timed out each time)")
        return FetchOutcome(chunks=0, not_modified=False, status=RunStatus.FAILED)
    source = SourceConfig(**run["config"])
    state = load_state(conn, source.name, run_id)
    first_run = _is_first_run(conn, source.name, run_id)
    order = IncrementalOrder.of(source.incremental_field, source.types)
    checkpoint = None
    if order is not None:
        checkpoint = loaded_checkpoint(order, state.checkpoint, source=source.name)
        # since_param sends the checkpoint in its canonical form, and none that cannot be read
        state = replace(state, checkpoint=None if checkpoint is None else order.stored(checkpoint))
    try:
        extraction = extract(source, state)
        chunks = 0
        if not extraction.not_modified:
            chunks = _store_and_fan_out(
                conn, run_id, source, extraction, enqueue_chunk, order=order, checkpoint=checkpoint, first_run=first_run
            )
    except SourceError as exc:
        message = f"{type(exc).__name__}: {redact(str(exc), source.secret_values())}"
        fail_run(conn, run_id, message)
        log.warning("fetch_failed", run_id=run_id, source=source.name, error=message)
        return FetchOutcome(chunks=0, not_modified=False, status=RunStatus.FAILED)
    except RunStopped:
        log.info("fetch_stopped", run_id=run_id, source=source.name, reason="the run ended (cancelled?)")
        return FetchOutcome(chunks=0, not_modified=False, status=None)
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
    extraction: Extraction,
    enqueue_chunk: EnqueueChunk,
    *,
    order: IncrementalOrder | None,
    checkpoint: Position | None,
    first_run: bool,
) -> int:
    """Store the extraction's items as raw chunks, handing each on; the number of chunks."""
    buffer = ChunkBuffer(conn, run_id=run_id, chunk_size=source.chunk_size, enqueue_chunk=enqueue_chunk)
    with paused_gc(), UnchangedRows(conn, run_id=run_id, source=source, first_run=first_run) as unchanged:
        sifter = Sifter(unchanged, buffer, chunk_size=source.chunk_size)
        items = extraction.items
        if unchanged.enabled and extraction.batches is not None:
            # A tabular source's rows, a batch at a time (from a local or already downloaded
            # file, so the batch size does not delay the first chunk). Same stream as items.
            for batch in extraction.batches:
                sifter.add_batch(batch)
            items = iter(())
        for item in items:
            if order is not None and checkpoint is not None and item.record is not None:
                if not order.is_past(dotted_get(item.record, order.field), checkpoint):
                    continue  # at or before the checkpoint: already committed by an earlier run
            sifter.add(item)
        sifter.close()
        return buffer.close()

