"""Fetch: stream a run's source, keep the raw payloads chunk by chunk, fan out the chunks.

Memory is bounded by the chunk size: items flow from the connector's generator, a batch
at a time through the unchanged-row filter (sifter.py, unchanged.py), into a buffer of
`chunk_size` (buffer.py), which is stored and handed on before the next one fills.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import structlog

from app.core.redaction import redact
from app.core.run_status import RunStatus
from app.core.sources_config import SourceConfig
from workers.pipeline.fetch.buffer import ChunkBuffer, EnqueueChunk
from workers.pipeline.fetch.repeats import KeptIds
from workers.pipeline.fetch.segment import Lease, RunStopped, SegmentBudget, SegmentClock, claim, load_kept
from workers.pipeline.fetch.sifter import Sifter
from workers.pipeline.fetch.unchanged import UnchangedRows
from workers.pipeline.finalize import fail_run, finalize_run
from workers.pipeline.gc_pause import paused_gc
from workers.pipeline.incremental import IncrementalOrder, Position, UncomparableValue
from workers.sources.base import Boundary, Extraction, FetchState, SourceError, dotted_get
from workers.sources.registry import extract

log = structlog.get_logger(__name__)

@dataclass(frozen=True)
class FetchOutcome:
    chunks: int
    not_modified: bool
    status: str | None  # set when the run finished during the fetch stage
    continued: bool = False  # the segment ended before the source did: a continuation task goes on


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
    conn: psycopg.Connection,
    run_id: int,
    *,
    enqueue_chunk: EnqueueChunk,
    max_attempts: int,
    budget: SegmentBudget | None = None,
    enqueue_continuation: Callable[[int], None] | None = None,
    timeout_s: float = 300,
    holder: uuid.UUID | None = None,
    lease_token: uuid.UUID | None = None,
) -> FetchOutcome | None:
    """Run one segment of the fetch stage of a run (segment.py): from where the last one
    stopped, until the source ends or `budget` is spent, when `enqueue_continuation` sends
    the next; `holder` is the worker process (workers/liveness.py), `lease_token` the lease
    this task claims (a retried task's own). None when there is nothing to do (fetched,
    finished, or another task fetches)."""
    claimed = claim(conn, run_id, timeout_s=timeout_s, holder=holder, token=lease_token)
    if claimed is None:
        return None
    lease, run = claimed
    if run["segment_attempts"] > max_attempts:
        fail_run(conn, run_id, f"fetch gave up after {max_attempts} attempts (worker lost or timed out each time)")
        return FetchOutcome(chunks=0, not_modified=False, status=RunStatus.FAILED)
    source = SourceConfig(**run["config"])
    resume = run["fetch_position"]
    state = load_state(conn, source.name, run_id)
    first_run = _is_first_run(conn, source.name, run_id)
    order = IncrementalOrder.of(source.incremental_field, source.types)
    checkpoint = None
    if order is not None:
        checkpoint = loaded_checkpoint(order, state.checkpoint, source=source.name)
        # since_param sends the checkpoint in its canonical form, and none that cannot be read
        state = replace(state, checkpoint=None if checkpoint is None else order.stored(checkpoint))
    if resume is not None:
        # Mid-run: the validators (304, same file hash) only decide whether a run reads at all.
        state = FetchState(checkpoint=state.checkpoint)
    progress = {**(run["fetch_progress"] or {}), "segments": run["fetch_segments"] + 1}
    try:
        extraction = extract(source, state, resume=None if resume is None else resume["source"])
        if extraction.restarted:
            progress["restarts"] = progress.get("restarts", 0) + 1
            log.warning("fetch_restarted", run_id=run_id, source=source.name, reason=extraction.restarted)
        segment = _Segment(
            conn, lease, source, extraction,
            enqueue_chunk=enqueue_chunk,
            clock=SegmentClock(budget or SegmentBudget.unlimited(), resume["chunk_no"] if resume else 0),
            fetch_state={**(run["fetch_state"] or {}), **extraction.new_state} if resume else None,
            progress=progress,
        )
        if extraction.not_modified:
            segment.finish()
        else:
            kept = load_kept(conn, run_id) if resume is not None and not first_run else None
            segment.read(order=order, checkpoint=checkpoint, first_run=first_run, kept=kept)
    except SourceError as exc:
        message = f"{type(exc).__name__}: {redact(str(exc), source.secret_values())}"
        fail_run(conn, run_id, message)
        log.warning("fetch_failed", run_id=run_id, source=source.name, error=message)
        return FetchOutcome(chunks=0, not_modified=False, status=RunStatus.FAILED)
    except RunStopped as exc:
        log.info("fetch_stopped", run_id=run_id, source=source.name, reason=str(exc))
        return FetchOutcome(chunks=0, not_modified=False, status=None)
    if segment.chunks is None:
        log.info("fetch_segment_done", run_id=run_id, source=source.name, progress=progress)
        if enqueue_continuation is not None:
            enqueue_continuation(run_id)
        return FetchOutcome(chunks=segment.next_chunk, not_modified=False, status=None, continued=True)
    status = finalize_run(conn, run_id)
    log.info("fetch_done", run_id=run_id, source=source.name, chunks=segment.chunks,
             not_modified=extraction.not_modified)
    return FetchOutcome(chunks=segment.chunks, not_modified=extraction.not_modified, status=status)


class _Segment:
    """One fetch task's reading of the source: items flow through the unchanged-row filter
    (Sifter) into the chunk buffer until the source ends or the budget is spent at a Boundary."""

    def __init__(
        self,
        conn: psycopg.Connection,
        lease: Lease,
        source: SourceConfig,
        extraction: Extraction,
        *,
        enqueue_chunk: EnqueueChunk,
        clock: SegmentClock,
        fetch_state: dict[str, Any] | None,
        progress: dict[str, Any],
    ):
        self.conn = conn
        self.lease = lease
        self.source = source
        self.extraction = extraction
        self.clock = clock
        self._fetch_state = fetch_state  # None: the extraction's own (a first segment)
        self.buffer = ChunkBuffer(
            conn, lease=lease, chunk_size=source.chunk_size, enqueue_chunk=enqueue_chunk,
            first_chunk_no=clock.first_chunk,
        )
        self.buffer.progress = progress
        self.chunks: int | None = None  # once the source is read to its end
        self.next_chunk = clock.first_chunk  # once the segment ended before the source did

    @property
    def fetch_state(self) -> dict[str, Any]:
        # Read once the stream stopped: connectors fill new_state as they go.
        if self._fetch_state is None:
            return dict(self.extraction.new_state)
        return {**self._fetch_state, **self.extraction.new_state}

    def read(
        self, *, order: IncrementalOrder | None, checkpoint: Position | None, first_run: bool, kept: KeptIds | None
    ) -> None:
        source, buffer = self.source, self.buffer
        with paused_gc(), UnchangedRows(self.conn, run_id=self.lease.run_id, source=source,
                                        first_run=first_run) as unchanged:
            if kept is not None:
                unchanged.kept = kept
            sifter = Sifter(unchanged, buffer, chunk_size=source.chunk_size)
            items = self.extraction.items
            if unchanged.enabled and self.extraction.batches is not None:
                # A tabular source's rows, a batch at a time (from a local or already downloaded
                # file, so the batch size does not delay the first chunk). Same stream as items.
                for batch in self.extraction.batches:
                    if isinstance(batch, Boundary):
                        if self._stop_at(batch, sifter, unchanged.kept):
                            return
                        continue
                    sifter.add_batch(batch)
                items = iter(())
            for item in items:
                if isinstance(item, Boundary):
                    if self._stop_at(item, sifter, unchanged.kept):
                        return
                    continue
                if order is not None and checkpoint is not None and item.record is not None:
                    if not order.is_past(dotted_get(item.record, order.field), checkpoint):
                        continue  # at or before the checkpoint: already committed by an earlier run
                sifter.add(item)
            sifter.close()
            self.finish()

    def finish(self) -> None:
        """The source is read: store the last chunk with the fetch's end, in one transaction."""
        progress = self.buffer.progress
        progress.update(self.extraction.final_progress, done=True)

        def end_fetch(conn: psycopg.Connection) -> None:
            self.lease.end_fetch(conn, chunks=self.buffer.chunk_no + self._pending(), state=self.fetch_state,
                                 progress=progress)

        self.chunks = self.buffer.close(then=end_fetch)

    def _pending(self) -> int:
        return 1 if len(self.buffer) or self.buffer.skipped else 0

    def _stop_at(self, boundary: Boundary, sifter: Sifter, kept: KeptIds | None) -> bool:
        """Note the boundary's progress; when the budget is spent, end the segment here."""
        self.buffer.progress.update(boundary.progress)
        if not self.clock.spent(self.buffer.chunk_no):
            return False
        sifter.close()  # every row read before the boundary goes into a chunk
        next_chunk = self.buffer.chunk_no + self._pending()
        position = {"chunk_no": next_chunk, "source": boundary.position()}

        def end_segment(conn: psycopg.Connection) -> None:
            self.lease.end_segment(conn, position=position, state=self.fetch_state, progress=self.buffer.progress,
                                   kept=kept)

        self.buffer.close(then=end_segment)
        self.next_chunk = next_chunk
        self._close_streams()
        return True

    def _close_streams(self) -> None:
        """Release what the connector holds open (a response, a file) now, not when collected."""
        for stream in (self.extraction.items, self.extraction.batches):
            close = getattr(stream, "close", None)
            if close is not None:
                close()
