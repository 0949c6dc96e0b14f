"""The fetch stage's chunk buffer: kept rows become raw chunks, stored and handed on one at a time."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import psycopg

from app.core.run_status import ACTIVE
from workers.pipeline.raw import encode_item, store_chunk
from workers.sources.base import RawItem

EnqueueChunk = Callable[[int, int], None]


class RunStopped(Exception):
    """The run ended (cancelled, or failed by the reconciler) while its fetch read on."""


class ChunkBuffer:
    """The encoded rows of a run's next raw chunk, stored and handed on once `chunk_size` are in."""

    def __init__(self, conn: psycopg.Connection, *, run_id: int, chunk_size: int, enqueue_chunk: EnqueueChunk):
        self.conn = conn
        self.run_id = run_id
        self.chunk_size = chunk_size
        self.enqueue_chunk = enqueue_chunk
        self.chunk_no = 0  # of the next chunk; once closed, the number of chunks stored
        self.skipped = 0  # rows left out since the last stored chunk: counted with the next one
        self.last_heartbeat = time.monotonic()
        self._rows: list[list[Any]] = []  # as stored (raw.encode_item)
        self._columns: list[str] | None = None  # of the tabular rows stored as values among them

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, item: RawItem) -> None:
        """Append a kept item; a full buffer is stored at once, so memory stays one chunk."""
        if self._columns is None and item.columns is not None:
            self._columns = item.columns  # rows of one file share one list
        self._rows.append(encode_item(item, self._columns))
        if len(self._rows) >= self.chunk_size:
            self.flush()

    def skip(self, count: int) -> None:
        """Count rows left out unchanged: the next stored chunk carries them."""
        self.skipped += count

    def flush(self) -> None:
        """Store the buffer as the next chunk (committed) and hand it on, unless a re-driven
        fetch finds it already done; then start the next one."""
        if store_chunk(
            self.conn, run_id=self.run_id, chunk_no=self.chunk_no, items=self._rows, skipped=self.skipped,
            columns=self._columns,
        ):
            self.enqueue_chunk(self.run_id, self.chunk_no)
        self.heartbeat()
        self.chunk_no += 1
        self._rows, self.skipped, self._columns = [], 0, None
        # The cyclic collector is paused while a fetch runs (gc_pause.py): clear anything
        # cyclic once per chunk, so that a long fetch stays within a chunk's memory.
        gc.collect(1)

    def close(self) -> int:
        """Store what is left; the number of chunks stored."""
        if self._rows or self.skipped:
            self.flush()  # even empty: the chunk carries the count of rows left out
        return self.chunk_no

    def heartbeat(self) -> None:
        """Show the fetch is alive (the reconciler re-drives a fetch whose heartbeat is stale),
        and learn whether the run is still active: a cancelled run stops reading here."""
        alive = self.conn.execute(
            "UPDATE runs SET heartbeat_at = now() WHERE id = %s AND status = ANY(%s) RETURNING 1",
            (self.run_id, list(ACTIVE)),
        ).fetchone()
        self.conn.commit()
        self.last_heartbeat = time.monotonic()
        if alive is None:
            raise RunStopped(f"run {self.run_id} is no longer active")
