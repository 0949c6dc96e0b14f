"""Repeated ids: tell the later copies of an id in a run from the first.

An id may appear more than once in a run (a file holding it twice, an API that serves an
updated record on a later page), and the copy that comes last in the source must win,
whatever order its chunks commit in. The upsert orders the copies it writes by chunk
number (records.last_chunk_no), and a record an earlier chunk of the run wrote is always
written again by a later one. What it cannot order is a copy it never writes: a copy left
out as unchanged against the record an earlier run stored, here (unchanged.py) or by the
upsert's hash check, leaves that record marked as the earlier run's, and an older,
different copy of this run committed after it would win. So every copy of an id after
the first one kept is flagged `repeat`: it is never left out here, and the upsert
records its position even when its content is unchanged
(workers/pipeline/upsert/records.py). The first copy needs no flag: whatever comes later
in the source is kept and flagged, so leaving the first out is safe.

A source's first run has no earlier run's records to be left out against, so its fetch
does not remember ids at all (stage.py): a first load pays nothing for this.

The ids kept so far are remembered exactly, as a set, while they are few (a re-run keeps
only the rows that changed, and checks every row it leaves out against them), then as
occupied slots of a fixed table, indexed by a CRC-32 of the id, so that memory stays
bounded whatever the size of the run. An id whose slot it shares with another is taken
for a repeat: the row is kept and written although it could have been left out, a cost
and never a wrong result. CRC-32, not hash(): str hashes change with every process, and
a re-driven fetch must take the same decisions as the first attempt (chunks it already
stored are kept as they were).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, repeat
from zlib import crc32

SET_LIMIT = 1 << 17  # ids kept in a set (about 12 MB at most), beyond which they move to the table
SLOTS = 1 << 24  # one byte each: 16 MB
_MASK = SLOTS - 1


def _slots(keys: Iterable[str]) -> Iterator[int]:
    # surrogatepass: an id from JSON may hold a lone surrogate, which strict UTF-8 refuses.
    return map(_MASK.__and__, map(crc32, map(str.encode, keys, repeat("utf-8"), repeat("surrogatepass"))))


class KeptIds:
    """The ids of the rows a run's fetch stage has kept so far, in source order."""

    def __init__(self) -> None:
        self._ids: set[str] | None = set()
        self._table: bytearray | None = None

    def __bool__(self) -> bool:
        return self._table is not None or bool(self._ids)

    def holding(self, keys: Sequence[str | None]) -> list[int]:
        """The positions of the keys already kept (a row with one of them is a repeat);
        None, no usable key, is never held."""
        if not self or not keys:
            return []
        if self._table is None:
            assert self._ids is not None
            return list(compress(range(len(keys)), map(self._ids.__contains__, keys)))
        table = self._table
        present = [n for n, key in enumerate(keys) if key is not None]
        usable: list[str] = [keys[n] for n in present]  # type: ignore[misc]
        return list(compress(present, map(table.__getitem__, _slots(usable))))

    def keep(self, keys: Sequence[str]) -> list[int]:
        """Record the keys of rows kept, in order; the positions of those that repeat an id
        kept before (earlier in this list included)."""
        if not keys:
            return []
        repeats = self._keep_in_table(keys) if self._table is not None else self._keep_in_set(keys)
        if self._ids is not None and len(self._ids) > SET_LIMIT:
            self._move_to_table()
        return repeats

    def _keep_in_set(self, keys: Sequence[str]) -> list[int]:
        known = self._ids
        assert known is not None
        if known.isdisjoint(keys) and len(set(keys)) == len(keys):  # the common case, without a Python loop
            known.update(keys)
            return []
        repeats = []
        for n, key in enumerate(keys):
            if key in known:
                repeats.append(n)
            else:
                known.add(key)
        return repeats

    def _keep_in_table(self, keys: Sequence[str]) -> list[int]:
        table = self._table
        assert table is not None
        slots = list(_slots(keys))
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

    def _move_to_table(self) -> None:
        assert self._ids is not None
        self._table = bytearray(SLOTS)
        deque(map(self._table.__setitem__, _slots(self._ids), repeat(1)), maxlen=0)
        self._ids = None

    def snapshot(self) -> set[str] | bytes:
        """What a later fetch segment of the run needs to go on (fetch/segment.py)."""
        return set(self._ids) if self._ids is not None else bytes(self._table or b"")

    @classmethod
    def restore(cls, snapshot: set[str] | bytes) -> KeptIds:
        kept = cls()
        if isinstance(snapshot, set):
            kept._ids = snapshot
        else:
            if len(snapshot) != SLOTS:
                raise ValueError(f"a kept-ids table has {SLOTS} slots, not {len(snapshot)}")
            kept._ids, kept._table = None, bytearray(snapshot)
        return kept
