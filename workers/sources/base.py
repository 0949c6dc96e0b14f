"""What every connector shares: the failure classes and the shape of an extraction.

A connector turns one source into a stream of RawItem, lazily, so memory is bounded by
the chunk size whatever the size of the source. Failures are classified ONCE, here at
the boundary: TransientError is worth retrying, PermanentError fails the run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


class SourceError(Exception):
    """Base class of failures raised by connectors."""


class TransientError(SourceError):
    """Worth retrying: 429, 5xx, timeouts, connection resets."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(SourceError):
    """Retrying will not help: other 4xx, unparsable bodies, oversized responses, loops."""


class RawItem:
    """One upstream record, or one piece of upstream data that could not be parsed.

    `record` is the parsed record (a dict) or None when `error` says why it could not be
    parsed; `line` is the 1-based line (CSV) or position (JSON/RSS) for rejections;
    `raw_text` keeps the unparsable text so a rejection still has its raw payload;
    `digest` is set by the fetch stage (workers/pipeline/fetch/raw_digest.py) and stored with
    the record, so that a re-run recognises the row unchanged. `repeat` is set by the
    fetch stage on a later copy of an id its run already holds (workers/pipeline/fetch/repeats.py).
    `values` and `columns` are set on a TabularRow only.
    """

    __slots__ = ("_record", "line", "error", "raw_text", "digest", "repeat", "values", "columns")

    def __init__(
        self,
        record: dict[str, Any] | None = None,
        line: int | None = None,
        error: str | None = None,
        raw_text: str | None = None,
        digest: bytes | None = None,
    ):
        self._record = record
        self.line = line
        self.error = error
        self.raw_text = raw_text
        self.digest = digest
        self.repeat = False
        self.values: list[str] | None = None
        self.columns: list[str] | None = None

    @property
    def record(self) -> dict[str, Any] | None:
        if self._record is None and self.values is not None:
            assert self.columns is not None
            self._record = dict(zip(self.columns, self.values, strict=True))
        return self._record

    def __repr__(self) -> str:
        return f"{type(self).__name__}(record={self.record!r}, line={self.line!r}, error={self.error!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawItem):
            return NotImplemented
        mine = (self.record, self.line, self.error, self.raw_text, self.digest)
        return mine == (other.record, other.line, other.error, other.raw_text, other.digest)

    __hash__ = None  # type: ignore[assignment]  # mutable


class TabularRow(RawItem):
    """A good row of a tabular source (CSV): its values, in the order of `columns`, a list
    shared by every row of the file.

    The record dict is built on first use of `record`. A re-run that leaves most rows out
    unchanged never builds theirs (the digest is taken from the values), and the fetch
    stage stores the values, not the dict (app/core/raw_format.py): building and encoding a
    dict per row was a quarter of a re-run's fetch stage. The short positional
    constructor matters too, at a million rows.
    """

    __slots__ = ()

    def __init__(self, values: list[str], line: int, columns: list[str], digest: bytes | None = None):
        self._record = None
        self.line = line
        self.error = None
        self.raw_text = None
        self.digest = digest
        self.repeat = False
        self.values = values
        self.columns = columns


class RowBatch:
    """Rows of a tabular source read in one go (see Extraction.batches).

    Good rows are kept as `values` (lists in the order of `columns`, a list shared by the
    whole file) with their first physical lines in `lines`; no object is made per row
    until one is asked for. A row that could not be used is a RawItem in `rejections`,
    paired with the number of good rows read before it, so that `items()` gives every
    row in file order.
    """

    __slots__ = ("columns", "values", "lines", "rejections")

    def __init__(
        self,
        columns: list[str],
        values: list[list[str]],
        lines: list[int],
        rejections: list[tuple[int, RawItem]] | None = None,
    ):
        self.columns = columns
        self.values = values
        self.lines = lines
        self.rejections = rejections or []

    def __len__(self) -> int:
        return len(self.values) + len(self.rejections)

    def items(
        self,
        digests: Sequence[bytes | None] | None = None,
        only: list[int] | None = None,
        repeats: Collection[int] = (),
    ) -> list[RawItem]:
        """The rows as items, in file order: the good rows given by position in `only`
        (ascending; all by default) and every rejection; `digests` (one per good row)
        are set on the rows made, and `repeat` on those whose position is in `repeats`."""
        columns, values, lines = self.columns, self.values, self.lines
        positions = range(len(values)) if only is None else only
        if digests is None:
            rows: list[RawItem] = [TabularRow(values[i], lines[i], columns) for i in positions]
        else:
            rows = [TabularRow(values[i], lines[i], columns, digests[i]) for i in positions]
        if repeats:
            for row, position in zip(rows, positions, strict=True):
                if position in repeats:
                    row.repeat = True
        if not self.rejections:
            return rows
        merged: list[RawItem] = []
        next_row = 0
        good_positions = list(positions)
        for before, rejection in self.rejections:
            while next_row < len(good_positions) and good_positions[next_row] < before:
                merged.append(rows[next_row])
                next_row += 1
            merged.append(rejection)
        merged.extend(rows[next_row:])
        return merged


class Boundary:
    """A point in a connector's stream where a fetch may stop and later resume.

    Connectors yield one between items (among RawItems, or among RowBatches) wherever they
    could start again: after a page, after a batch of rows. `position()` is the JSON-able
    place to resume from, the connector's own shape, handed back to it as `resume`
    (extract(..., resume=...)); it is called only when the fetch stops there, so it may
    cost something. `progress` says how far the stream got, for people (GET /runs/{id}):
    any of `bytes_read`, `bytes_total`, `pages`, `items`.
    """

    __slots__ = ("position", "progress")

    def __init__(self, position: Callable[[], dict[str, Any]], progress: dict[str, Any]):
        self.position = position
        self.progress = progress

    def __repr__(self) -> str:
        return f"Boundary(progress={self.progress!r})"


@dataclass(slots=True)
class FetchState:
    """What the previous successful run left behind for this source."""

    checkpoint: Any = None  # in its canonical stored form (workers/pipeline/incremental.py)
    etag: str | None = None
    last_modified: str | None = None
    file_hash: str | None = None


@dataclass
class Extraction:
    """The result of opening a source.

    `not_modified` is True when the upstream said (304) or showed (same file hash) that
    nothing changed: then `items` is empty and nothing is processed. `new_state` holds
    the validators to store once the run succeeds; connectors fill it while `items` is
    consumed, so read it only after exhausting the iterator.

    A tabular connector may also offer `batches`: the same rows, in the same order, a
    RowBatch at a time, read from the same stream (consume one or the other, never
    both). A re-run that leaves most rows out unchanged then never makes an object per
    row (workers/pipeline/fetch/unchanged.py).

    Both streams may carry Boundary markers: where the fetch stage may end a segment and
    resume later. Given `resume` (a Boundary's position), a connector starts there;
    `new_state` then holds only what it learnt in this segment (the stage keeps the rest).
    """

    items: Iterator[RawItem | Boundary]
    not_modified: bool = False
    new_state: dict[str, Any] = field(default_factory=dict)
    batches: Iterator[RowBatch | Boundary] | None = None
    # Set when extract() was given a position it could not resume from (the file changed
    # since): the stream starts again from the top of the source, and this says why.
    restarted: str | None = None
    # The stream's last progress (the Boundary keys), filled by the connector once the
    # source is read to its end, where no Boundary follows.
    final_progress: dict[str, Any] = field(default_factory=dict)


def dotted_get(obj: Any, path: str) -> Any:
    """Follow a dotted path ("meta.next", "items.0.id") through dicts and lists; None if absent."""
    if path == "":
        return obj
    current = obj
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return None
            current = current[index]
        else:
            return None
    return current
