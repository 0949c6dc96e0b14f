"""The csv connector: rows of a local or downloaded CSV file, streamed, never loaded whole.

The file is read once to hash it and to learn whether it is valid UTF-8 (else it is
Latin-1, which decodes any byte), then once more row by row. An unchanged hash ends the
run before any parsing. A row that cannot be used (wrong field count, NUL byte, csv
error) becomes a rejection carrying its physical start line and raw text, and the rows
after it still load: one bad line must not cost the whole file.

A local file has no size cap and is read in segments (workers/pipeline/fetch/segment.py):
after every batch of rows comes a Boundary holding the byte offset and line of the next
row, with the file's identity (size, mtime, a hash of its first block), its hash and its
encoding, learnt by the first segment. A later segment checks the identity, seeks to the
offset and reads on; a file that changed in between is read again from the top. A
downloaded file is still one segment, under max_response_bytes.
"""

from __future__ import annotations

import csv
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from app.core.sources_config import SourceConfig
from workers.sources.base import Boundary, Extraction, FetchState, PermanentError, RawItem, RowBatch
from workers.sources.document import source_is_local
from workers.sources.files import ContentDigest, digest_file, file_identity, local_path
from workers.sources.http import Download, HttpFetcher, describe_url

RAW_TEXT_LIMIT = 64 * 1024  # a runaway quoted field must not make one rejection megabytes long
ROWS_PER_BATCH = 5000  # rows read in one go (Extraction.batches); the unchanged-row filter compares one per query


def extract(
    source: SourceConfig,
    state: FetchState,
    fetcher: HttpFetcher | None = None,
    resume: dict[str, Any] | None = None,
) -> Extraction:
    """Open the file, check its hash, read the header; rows come lazily as RawItem."""
    assert source.url is not None
    if source_is_local(source):
        return _extract_local(source, state, resume)
    download = _download(source, state, fetcher)
    if download.not_modified:
        return Extraction(items=iter(()), not_modified=True)
    assert download.path is not None and download.digest is not None
    path, digest = download.path, download.digest
    validators = {"etag": download.etag, "last_modified": download.last_modified}
    if state.file_hash is not None and digest.sha256 == state.file_hash:
        path.unlink(missing_ok=True)
        return Extraction(items=iter(()), not_modified=True)
    try:
        rows = CsvRows(path, _encoding(digest), source.delimiter, describe_url(source.url), temp=path,
                       max_field_chars=source.max_field_chars)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    batches = rows.batches(ROWS_PER_BATCH)
    return Extraction(items=_flatten(batches), batches=batches, new_state={"file_hash": digest.sha256, **validators})


def _extract_local(source: SourceConfig, state: FetchState, resume: dict[str, Any] | None) -> Extraction:
    """A local file, read from `resume` when the file is still the one the run started on,
    else from the top. It has no size cap: it is read a row at a time, in segments."""
    assert source.url is not None
    path = local_path(source.url)
    restarted = None
    if resume is not None:
        if file_identity(path) == resume["identity"]:
            rows = CsvRows(path, resume["encoding"], source.delimiter, str(path),
                           max_field_chars=source.max_field_chars, resume=resume)
            batches = rows.batches(ROWS_PER_BATCH)
            return Extraction(items=_flatten(batches), batches=batches, new_state={"file_hash": resume["file_hash"]})
        # Never two versions of a file in one run: the new one is read whole, and its chunks,
        # numbered after the old one's, win over them (workers/pipeline/upsert/records.py).
        restarted = f"{path} changed since the run started reading it (size, mtime or first block): read from the top"
    identity = file_identity(path)
    digest = digest_file(path, None)
    if resume is None and state.file_hash is not None and digest.sha256 == state.file_hash:
        return Extraction(items=iter(()), not_modified=True)
    encoding = _encoding(digest)
    rows = CsvRows(path, encoding, source.delimiter, str(path), max_field_chars=source.max_field_chars,
                   resume={"identity": identity, "file_hash": digest.sha256, "encoding": encoding})
    batches = rows.batches(ROWS_PER_BATCH)
    return Extraction(items=_flatten(batches), batches=batches, new_state={"file_hash": digest.sha256},
                      restarted=restarted)


def _download(source: SourceConfig, state: FetchState, fetcher: HttpFetcher | None) -> Download:
    assert source.url is not None
    active = fetcher or HttpFetcher.for_source(source)
    try:
        return active.download(
            source.url,
            source.resolved_headers(),
            etag=state.etag,
            last_modified=state.last_modified,
            suffix=".csv",
        )
    finally:
        if fetcher is None:
            active.close()


def _encoding(digest: ContentDigest) -> str:
    return "utf-8" if digest.is_utf8 else "latin-1"


_BOM = "\ufeff"


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
        text = "".join(kept)
        return text[:RAW_TEXT_LIMIT] + "...[truncated]" if size > RAW_TEXT_LIMIT else text.rstrip("\r\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class CsvRows:
    """An open CSV file positioned after its header. Owns the file handle and any temp file.

    Both are released when the rows are exhausted or closed, or, if the items are never
    consumed, when the iterator is garbage collected.

    Given `resume` (the file's identity, hash and encoding, and where an earlier segment
    stopped: `offset`, `line`, `rows`), the rows start there, and a Boundary follows every
    batch: the byte offset and physical line after it, for the next segment to start at.
    The csv reader reads through `readline`, not the file iterator, because only then may
    the text handle `tell()` where it is: for UTF-8 and Latin-1 (stateless decoders) that
    is the byte offset itself. It costs the reader nothing measurable.
    """

    def __init__(
        self, path: Path, encoding: str, delimiter: str, where: str, *, temp: Path | None = None,
        max_field_chars: int = 8 * 1024 * 1024, resume: dict[str, Any] | None = None,
    ):
        self.where = where
        self._temp = temp
        self._resume = resume
        self._handle: TextIO = path.open("r", encoding=encoding, newline="")
        offset, line = (resume.get("offset", 0), resume.get("line", 0)) if resume else (0, 0)
        self._raw = _RawLines(path, encoding, offset=offset, line=line)
        self._rows_before = resume.get("rows", 0) if resume else 0
        try:
            self._size = os.fstat(self._handle.fileno()).st_size
            # A UTF-8 byte order mark is not part of the first column's name. Skipped here
            # rather than by the utf-8-sig codec, which Python decodes on a slower path
            # than plain utf-8, for every row of the file.
            if encoding == "utf-8" and self._handle.read(1) != _BOM:
                self._handle.seek(0)
            # Process-wide in the csv module; a worker process reads one file at a time.
            csv.field_size_limit(max_field_chars)
            self._reader = csv.reader(iter(self._handle.readline, ""), delimiter=delimiter)
            self.header = self._read_header()
            # Physical lines before the reader's first: line numbers go on from where the
            # earlier segment stopped.
            self._line_base = 0
            if offset:
                self._handle.seek(offset)
                self._line_base = line - self._reader.line_num
        except BaseException:
            self._handle.close()
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
        self._handle.close()
        self._raw.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def items(self) -> Iterator[RawItem | Boundary]:
        """Every row as a RawItem, in file order."""
        return _flatten(self.batches(ROWS_PER_BATCH))

    def batches(self, size: int) -> Iterator[RowBatch | Boundary]:
        """The rows, `size` at a time (fewer in the last batch)."""
        generator = self._batches(size)
        weakref.finalize(generator, self.close)
        return generator

    def _batches(self, size: int) -> Iterator[RowBatch | Boundary]:
        header, width, reader, raw = self.header, len(self.header), self._reader, self._raw.text
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
            if self._resume is not None:  # the file's last progress: read to its end
                yield Boundary(None, {"bytes_read": self._size, "bytes_total": self._size, "items": rows_read})
        finally:
            self.close()

    def _boundary(self, line: int, rows: int) -> Boundary:
        """Where the next row starts: the next segment may start there (see the class notes)."""
        handle, resume = self._handle, self._resume
        assert resume is not None
        here = {**resume, "offset": handle.tell(), "line": line, "rows": rows}  # tell(): tens of µs

        def position() -> dict[str, Any]:
            return here

        # The binary buffer's position runs up to a read-ahead block ahead of the rows: close
        # enough for people, and free, unlike tell().
        return Boundary(position, {"bytes_read": handle.buffer.tell(), "bytes_total": self._size, "items": rows})


def _flatten(batches: Iterator[RowBatch | Boundary]) -> Iterator[RawItem | Boundary]:
    for batch in batches:
        if isinstance(batch, Boundary):
            yield batch
        else:
            yield from batch.items()
