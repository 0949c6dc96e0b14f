"""The fetch stage's sifter: items pass the unchanged-row filter in batches, then go to the chunk buffer."""

from __future__ import annotations

import time
from collections import deque

from workers.pipeline.fetch.buffer import ChunkBuffer
from workers.pipeline.fetch.unchanged import BATCH, Sifted, UnchangedRows
from workers.sources.base import RawItem, RowBatch

# Well under the reconciler's timeout, so that a fetch reading unchanged rows is never taken for lost.
HEARTBEAT_EVERY_S = 5.0
# A chunk that fills slowly (a re-run storing only its changed rows) is stored once this
# many rows were read past it, times chunk_size, even if not full: the workers then
# normalise it while the fetch reads on, instead of all at the end of the run.
FLUSH_AFTER_CHUNKS_READ = 20
# Batches handed to the unchanged-row filter before the oldest one's result is taken: the
# database always has the next batch queued while this process reads the one after.
IN_FLIGHT = 2


class Sifter:
    """Hands items to the unchanged-row filter in batches and what it keeps to the buffer, in order."""

    def __init__(self, unchanged: UnchangedRows, buffer: ChunkBuffer, *, chunk_size: int):
        self.unchanged = unchanged
        self.buffer = buffer
        self.chunk_size = chunk_size
        # Compared a chunk's worth at a time (capped: two batches are held at once), so that a
        # slow upstream's first rows reach the workers about as early as without the filter.
        self.batch_size = min(chunk_size, BATCH)
        self._pending: list[RawItem] = []  # read, not yet handed to the filter
        self._in_flight: deque[Sifted] = deque()  # batches being compared meanwhile, oldest first

    def add(self, item: RawItem) -> None:
        """Pass an item on: straight to the buffer (flagged when it repeats an id) when the
        source is not filtered."""
        if not self.unchanged.enabled:
            self.buffer.add(self.unchanged.flag_repeat(item))
            return
        self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self.add_batch(self._pending)
            self._pending = []  # a new list: the one handed on is read by a helper thread

    def add_batch(self, batch: list[RawItem] | RowBatch) -> None:
        """Start comparing a batch; meanwhile keep what the one before the last left."""
        self._in_flight.append(self.unchanged.submit(batch))
        if len(self._in_flight) > IN_FLIGHT:
            self._keep(self._in_flight.popleft())

    def close(self) -> None:
        """Hand on the last, partial batch and keep what every batch in flight leaves."""
        self.add_batch(self._pending)
        self._pending = []
        while self._in_flight:
            self._keep(self._in_flight.popleft())

    def _keep(self, sifted: Sifted) -> None:
        kept, dropped = sifted()
        self.buffer.skip(dropped)  # first: a chunk the kept rows fill carries the count
        for item in kept:
            self.buffer.add(item)
        if len(self.buffer) and self.buffer.skipped >= FLUSH_AFTER_CHUNKS_READ * self.chunk_size:
            self.buffer.flush()  # decided by the rows alone, so a re-driven fetch cuts the same chunks
        if time.monotonic() - self.buffer.last_heartbeat > HEARTBEAT_EVERY_S:
            self.buffer.heartbeat()  # a long stretch of unchanged rows stores no chunk
