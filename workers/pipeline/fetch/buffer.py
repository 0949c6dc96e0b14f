"""The fetch stage's chunk buffer: kept rows become raw chunks, stored and handed on one at a time."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import psycopg

from workers.pipeline.fetch.segment import Lease
from workers.pipeline.raw import encode_item, store_chunk
from workers.sources.base import RawItem

EnqueueChunk = Callable[[int, int], None]


class ChunkBuffer:
    """The encoded rows of a run's next raw chunk, stored and handed on once `chunk_size` are in.

    Every write first checks the fetch task still holds the run's lease (segment.py), in
    the same transaction, and carries the fetch's `progress` to the run.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        lease: Lease,
        chunk_size: int,
        enqueue_chunk: EnqueueChunk,
        first_chunk_no: int = 0,
    ):
        self.conn = conn
        self.lease = lease
        self.run_id = lease.run_id
        self.chunk_size = chunk_size
        self.enqueue_chunk = enqueue_chunk
        self.chunk_no = first_chunk_no  # of the next chunk; once closed, the number of chunks stored
        self.skipped = 0  # rows left out since the last stored chunk: counted with the next one
        self.progress: dict[str, Any] = {}  # shown on the run (GET /runs/{id}) with each write
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

    def flush(self, then: Callable[[psycopg.Connection], None] | None = None) -> None:
        """Store the buffer as the next chunk (committed, with `then` in the same transaction)
        and hand it on, unless a re-driven fetch finds it already done; then start the next one."""
        self.progress["chunks"] = self.chunk_no + 1
        if store_chunk(
            self.conn, run_id=self.run_id, chunk_no=self.chunk_no, items=self._rows, skipped=self.skipped,
            columns=self._columns, before=self._hold, after=then,
        ):
            self.enqueue_chunk(self.run_id, self.chunk_no)
        self.last_heartbeat = time.monotonic()
        self.chunk_no += 1
        self._rows, self.skipped, self._columns = [], 0, None
        # The cyclic collector is paused while a fetch runs (gc_pause.py): clear anything
        # cyclic once per chunk, so that a long fetch stays within a chunk's memory.
        gc.collect(1)

    def close(self, then: Callable[[psycopg.Connection], None] | None = None) -> int:
        """Store what is left, with `then` in the same transaction; the number of the next chunk."""
        if self._rows or self.skipped:
            self.flush(then)  # even empty: the chunk carries the count of rows left out
        elif then is not None:
            with self.conn.transaction():
                self._hold(self.conn)
                then(self.conn)
        return self.chunk_no

    def heartbeat(self) -> None:
        """Show the fetch is alive (the reconciler re-drives a fetch whose heartbeat is stale),
        and learn whether it may go on: a cancelled run, or a lease another task took, stops here."""
        with self.conn.transaction():
            self._hold(self.conn)
        self.last_heartbeat = time.monotonic()

    def _hold(self, conn: psycopg.Connection) -> None:
        self.lease.hold(conn, self.progress)
