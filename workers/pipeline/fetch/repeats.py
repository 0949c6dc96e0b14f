"""Repeated ids: tell the later copies of an id in a run from the first.

An id may appear more than once in a run (a file holding it twice, an API that serves an
updated record on a later page), and the copy that comes last in the source must win,
whatever order its chunks commit in. The upsert orders the copies it writes by chunk
number (records.last_chunk_no); it cannot order a copy it never writes. A copy left out
as unchanged, here (unchanged.py) or by the upsert's hash check, leaves the stored record
marked as an earlier run's, and an older, different copy of this run committed after it
would win. So every copy of an id after the first one kept is flagged `repeat`: it is
never left out here, and the upsert records its position even when its content is
unchanged (workers/pipeline/upsert/records.py). The first copy needs no flag: whatever
comes later in the source is kept and flagged, so leaving the first out is safe.

The ids kept so far are remembered as occupied slots of a fixed table indexed by a
CRC-32 of the id, not as a set: memory stays the same whatever the size of the run. An
id that shares a slot with another is taken for a repeat: the row is kept and written
although it could have been left out, a cost and never a wrong result. CRC-32 rather
than hash(): str hashes change with every process, and a re-driven fetch must take the
same decisions as the first attempt (chunks it already stored are kept as they were).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat
from zlib import crc32

SLOTS = 1 << 24  # one byte each: 16 MB, allocated on first use
_MASK = SLOTS - 1


def _slots(keys: Sequence[str]) -> list[int]:
    # surrogatepass: an id from JSON may hold a lone surrogate, which strict UTF-8 refuses.
    encoded = map(str.encode, keys, repeat("utf-8"), repeat("surrogatepass"))
    return list(map(_MASK.__and__, map(crc32, encoded)))


class KeptIds:
    """The ids of the rows a run's fetch stage has kept so far, in source order."""

    def __init__(self) -> None:
        self._table: bytearray | None = None

    def __bool__(self) -> bool:
        return self._table is not None

    def holding(self, keys: Sequence[str]) -> list[int]:
        """The positions of the keys already kept (a row with one of them is a repeat)."""
        table = self._table
        if table is None or not keys:
            return []
        return [n for n, held in enumerate(map(table.__getitem__, _slots(keys))) if held]

    def keep(self, keys: Sequence[str]) -> list[int]:
        """Record the keys of rows kept, in order; the positions of those that repeat an id
        kept before (earlier in this list included)."""
        if not keys:
            return []
        if self._table is None:
            self._table = bytearray(SLOTS)
        table, slots = self._table, _slots(keys)
        if len(set(slots)) == len(slots) and not any(map(table.__getitem__, slots)):
            deque(map(table.__setitem__, slots, repeat(1)), maxlen=0)  # the common case, without a Python loop
            return []
        repeats = []
        for n, slot in enumerate(slots):
            if table[slot]:
                repeats.append(n)
            else:
                table[slot] = 1
        return repeats
