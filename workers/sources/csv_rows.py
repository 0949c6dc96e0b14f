"""Rows of a CSV text, a batch at a time, with a place to resume after every batch.

The text comes from a LineSource: a local file (FileLines, here) or a stream over HTTP
(csv_stream.StreamLines). Either hands the csv reader its lines, says at a boundary the
byte offset of the next line, and gives a rejected row its raw text. A row that cannot be
used (wrong field count, NUL byte, csv error) becomes a rejection carrying its physical
start line and raw text, and the rows after it still load: one bad line must not cost the
whole file.
"""

from __future__ import annotations

import csv
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from workers.sources.base import Boundary, PermanentError, RawItem, RowBatch

RAW_TEXT_LIMIT = 64 * 1024  # a runaway quoted field must not make one rejection megabytes long
ROWS_PER_BATCH = 5000  # rows read in one go (Extraction.batches); the unchanged-row filter compares one per query
_BOM = "\ufeff"


class LineSource(Protocol):
    """Where a CsvRows reads its text."""

    lines: Iterator[str]  # the physical lines, line ends kept (as a file opened with newline="")
    size: int | None  # the file's length in bytes, when known
    # Called before each row is read, by a source that keeps the raw text of the row itself.
    mark: Callable[[], None] | None

    def offset(self) -> int:
        """The byte offset of the next line the reader gets (read at a boundary only)."""

    def bytes_read(self) -> int:
        """About how far the source is read, for people."""

    def move_to(self, offset: int) -> None:
        """Go on at byte `offset` (a resumed segment, once the header is read)."""

    def raw_text(self, first: int, last: int) -> str:
        """The raw text of physical lines first..last, the row just read, capped."""

    def close(self) -> None: ...


def raw_excerpt(lines: list[str], size: int) -> str:
    """A rejected row's lines as its raw text: capped, without the final line break."""
    text = "".join(lines)
    return text[:RAW_TEXT_LIMIT] + "...[truncated]" if size > RAW_TEXT_LIMIT else text.rstrip("\r\n")


class _RawLines:
    """The raw text of rejected rows, read from a second handle on the same file.

    The csv reader reads the file directly (no Python call per line), and `line_num`
    gives each row's physical lines. Only a rejected row needs its raw text; rejections
    come in increasing line order, so one forward pass of a second handle serves them
    all, and a file without bad rows is read once.
    """

    def __init__(self, path: Path, encoding: str, *, offset: int = 0, line: int = 0):
        self._path = path
        self._encoding = encoding
        self._offset = offset  # where the rows start (a resumed segment's byte offset)
        self._handle: TextIO | None = None
        self._consumed = line  # lines before the second handle's position

    def text(self, first: int, last: int) -> str:
        """Physical lines first..last (1-based), capped, without the final line break."""
        if self._handle is None:
            self._handle = self._path.open("r", encoding=self._encoding, newline="")
            self._handle.seek(self._offset)
        kept: list[str] = []
        size = 0
        for line in self._handle:
            self._consumed += 1
            if self._consumed >= first and size < RAW_TEXT_LIMIT:
                kept.append(line)
                size += len(line)
            if self._consumed >= last:
                break
        return raw_excerpt(kept, size)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class FileLines:
    """The lines of a local file.

    The csv reader reads through `readline`, not the file iterator, because only then may
    the text handle `tell()` where it is: for UTF-8 and Latin-1 (stateless decoders) that
    is the byte offset itself. It costs the reader nothing measurable.
    """

    mark: Callable[[], None] | None = None  # rejected rows are read again, from a second handle

    def __init__(self, path: Path, encoding: str, *, offset: int = 0, line: int = 0):
        self._handle: TextIO = path.open("r", encoding=encoding, newline="")
        self._raw = _RawLines(path, encoding, offset=offset, line=line)
        try:
            self.size: int | None = os.fstat(self._handle.fileno()).st_size
            # A UTF-8 byte order mark is not part of the first column's name. Skipped here
            # rather than by the utf-8-sig codec, which Python decodes on a slower path
            # than plain utf-8, for every row of the file.
            if encoding == "utf-8" and self._handle.read(1) != _BOM:
                self._handle.seek(0)
        except BaseException:
            self._handle.close()
            raise
        self.lines = iter(self._handle.readline, "")

    def offset(self) -> int:
        return self._handle.tell()  # tens of µs

    def bytes_read(self) -> int:
        # The binary buffer's position runs up to a read-ahead block ahead of the rows: close
        # enough for people, and free, unlike tell().
        return self._handle.buffer.tell()

    def move_to(self, offset: int) -> None:
        self._handle.seek(offset)

    def raw_text(self, first: int, last: int) -> str:
        return self._raw.text(first, last)

    def close(self) -> None:
        self._handle.close()
        self._raw.close()


class CsvRows:
    """A CSV text positioned after its header. Owns its LineSource.

    It is closed when the rows are exhausted or closed, or, if the items are never
    consumed, when the iterator is garbage collected.

    Given `resume` (what the connector keeps about the file, and where an earlier segment
    stopped: `offset`, `line`, `rows`), the rows start there, and a Boundary follows every
    batch: the byte offset and physical line after it, for the next segment to start at,
    with the rest of `resume` as it was.
    """

    def __init__(
        self, path: Path, encoding: str, delimiter: str, where: str, *,
        max_field_chars: int = 8 * 1024 * 1024, resume: dict[str, Any] | None = None,
    ):
        offset, line = (resume.get("offset", 0), resume.get("line", 0)) if resume else (0, 0)
        lines = FileLines(path, encoding, offset=offset, line=line)
        self._start(lines, delimiter, where, max_field_chars=max_field_chars, resume=resume, header=None)

    @classmethod
    def over(
        cls, lines: LineSource, delimiter: str, where: str, *, max_field_chars: int,
        resume: dict[str, Any] | None, header: list[str] | None,
    ) -> CsvRows:
        """Rows read from `lines`; `header` when an earlier segment read it (`lines` then
        start at the first row to read), else the first row of `lines` is the header."""
        rows = cls.__new__(cls)
        rows._start(lines, delimiter, where, max_field_chars=max_field_chars, resume=resume, header=header)
        return rows

    def _start(
        self, lines: LineSource, delimiter: str, where: str, *, max_field_chars: int,
        resume: dict[str, Any] | None, header: list[str] | None,
    ) -> None:
        self.where = where
        self._lines = lines
        self._resume = resume
        self.final_progress: dict[str, Any] = {}  # Extraction.final_progress, once the rows are read
        offset, line = (resume.get("offset", 0), resume.get("line", 0)) if resume else (0, 0)
        self._rows_before = resume.get("rows", 0) if resume else 0
        try:
            # Process-wide in the csv module; a worker process reads one file at a time.
            csv.field_size_limit(max_field_chars)
            self._reader = csv.reader(lines.lines, delimiter=delimiter)
            self.header = self._read_header() if header is None else header
            # Physical lines before the reader's first: line numbers go on from where the
            # earlier segment stopped.
            self._line_base = 0
            if offset:
                lines.move_to(offset)
                self._line_base = line - self._reader.line_num
        except BaseException:
            lines.close()
            raise

    def _read_header(self) -> list[str]:
        try:
            for row in self._reader:
                if not row:
                    continue  # leading blank lines
                if any("\x00" in name for name in row):
                    raise PermanentError(f"{self.where}: CSV header row contains a NUL byte")
                if all(not name.strip() for name in row):
                    raise PermanentError(f"{self.where}: CSV header row (line {self._reader.line_num}) is empty")
                duplicates = sorted({name for name in row if row.count(name) > 1})
                if duplicates:
                    raise PermanentError(f"{self.where}: duplicate column name(s) in CSV header: {duplicates}")
                return row
        except csv.Error as exc:
            raise PermanentError(f"{self.where}: unparsable CSV header: {exc}") from None
        except UnicodeDecodeError:
            raise PermanentError(f"{self.where}: file changed while being read (no longer UTF-8)") from None
        raise PermanentError(f"{self.where}: CSV file is empty (no header row)")

    def close(self) -> None:
        self._lines.close()

    def items(self) -> Iterator[RawItem | Boundary]:
        """Every row as a RawItem, in file order."""
        return flatten(self.batches(ROWS_PER_BATCH))

    def batches(self, size: int) -> Iterator[RowBatch | Boundary]:
        """The rows, `size` at a time (fewer in the last batch)."""
        generator = self._batches(size)
        weakref.finalize(generator, self.close)
        return generator

    def _batches(self, size: int) -> Iterator[RowBatch | Boundary]:
        header, width, reader, raw = self.header, len(self.header), self._reader, self._lines.raw_text
        mark = self._lines.mark
        base = self._line_base
        rows_read = self._rows_before
        values: list[list[str]] = []
        lines: list[int] = []
        rejections: list[tuple[int, RawItem]] = []

        def reject(start: int, error: str) -> None:
            rejections.append((len(values), RawItem(record=None, line=start, error=error,
                                                    raw_text=raw(start, base + reader.line_num))))

        try:
            while True:
                if len(values) + len(rejections) >= size:
                    rows_read += len(values) + len(rejections)
                    yield RowBatch(header, values, lines, rejections)
                    values, lines, rejections = [], [], []
                    if self._resume is not None:
                        yield self._boundary(base + reader.line_num, rows_read)
                start = base + reader.line_num + 1
                if mark is not None:
                    mark()
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    reject(start, f"unparsable CSV row: {exc}")
                    continue
                except UnicodeDecodeError:
                    raise PermanentError(f"{self.where}: file changed while being read (no longer UTF-8)") from None
                if len(row) == width and "\x00" not in "".join(row):
                    values.append(row)
                    lines.append(start)
                elif not row:
                    continue  # blank line
                elif len(row) != width:
                    reject(start, f"expected {width} fields as in the header, found {len(row)}")
                else:  # checked on the fields, not the raw text, which may be truncated
                    reject(start, "row contains a NUL byte")
            if values or rejections:
                rows_read += len(values) + len(rejections)
                yield RowBatch(header, values, lines, rejections)
            # The stream's last progress: read to its end (no Boundary: nothing is left to resume).
            self.final_progress.update(bytes_read=self._lines.bytes_read(), items=rows_read)
        finally:
            self.close()

    def _boundary(self, line: int, rows: int) -> Boundary:
        """Where the next row starts: the next segment may start there (see the class notes)."""
        source, resume = self._lines, self._resume
        assert resume is not None
        here = {**resume, "offset": source.offset(), "line": line, "rows": rows}

        def position() -> dict[str, Any]:
            return here

        progress: dict[str, Any] = {"bytes_read": source.bytes_read(), "items": rows}
        if source.size is not None:
            progress["bytes_total"] = source.size
        return Boundary(position, progress)


def flatten(batches: Iterator[RowBatch | Boundary]) -> Iterator[RawItem | Boundary]:
    for batch in batches:
        if isinstance(batch, Boundary):
            yield batch
        else:
            yield from batch.items()
