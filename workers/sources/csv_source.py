"""The csv connector: rows of a local or downloaded CSV file, streamed, never loaded whole.

The file is read once to hash it and to learn whether it is valid UTF-8 (else it is
Latin-1, which decodes any byte), then once more row by row. An unchanged hash ends the
run before any parsing. A row that cannot be used (wrong field count, NUL byte, csv
error) becomes a rejection carrying its physical start line and raw text, and the rows
after it still load: one bad line must not cost the whole file.
"""

from __future__ import annotations

import csv
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from app.core.sources_config import SourceConfig
from workers.sources.base import Extraction, FetchState, PermanentError, RawItem, RowBatch
from workers.sources.document import source_is_local
from workers.sources.files import ContentDigest, digest_file, local_path
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
    validators: dict[str, Any] = {}
    temp: Path | None = None
    if source_is_local(source):
        path = local_path(source.url)
        digest = digest_file(path, source.max_response_bytes)
        where = str(path)
    else:
        download = _download(source, state, fetcher)
        if download.not_modified:
            return Extraction(items=iter(()), not_modified=True)
        assert download.path is not None and download.digest is not None
        path, digest, temp = download.path, download.digest, download.path
        where = describe_url(source.url)
        validators = {"etag": download.etag, "last_modified": download.last_modified}

    if state.file_hash is not None and digest.sha256 == state.file_hash:
        if temp is not None:
            temp.unlink(missing_ok=True)
        return Extraction(items=iter(()), not_modified=True)
    try:
        rows = CsvRows(path, _encoding(digest), source.delimiter, where, temp=temp,
                       max_field_chars=source.max_field_chars)
    except BaseException:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise
    batches = rows.batches(ROWS_PER_BATCH)
    return Extraction(items=_flatten(batches), batches=batches, new_state={"file_hash": digest.sha256, **validators})


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

    def __init__(self, path: Path, encoding: str):
        self._path = path
        self._encoding = encoding
        self._handle: TextIO | None = None
        self._consumed = 0  # lines of the second handle read so far

    def text(self, first: int, last: int) -> str:
        """Physical lines first..last (1-based), capped, without the final line break."""
        if self._handle is None:
            self._handle = self._path.open("r", encoding=self._encoding, newline="")
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
    """

    def __init__(
        self, path: Path, encoding: str, delimiter: str, where: str, *, temp: Path | None = None,
        max_field_chars: int = 8 * 1024 * 1024,
    ):
        self.where = where
        self._temp = temp
        self._handle: TextIO = path.open("r", encoding=encoding, newline="")
        self._raw = _RawLines(path, encoding)
        try:
            # A UTF-8 byte order mark is not part of the first column's name. Skipped here
            # rather than by the utf-8-sig codec, which Python decodes on a slower path
            # than plain utf-8, for every row of the file.
            if encoding == "utf-8" and self._handle.read(1) != _BOM:
                self._handle.seek(0)
            # Process-wide in the csv module; a worker process reads one file at a time.
            csv.field_size_limit(max_field_chars)
            self._reader = csv.reader(self._handle, delimiter=delimiter)
            self.header = self._read_header()
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

    def items(self) -> Iterator[RawItem]:
        """Every row as a RawItem, in file order."""
        return _flatten(self.batches(ROWS_PER_BATCH))

    def batches(self, size: int) -> Iterator[RowBatch]:
        """The rows, `size` at a time (fewer in the last batch)."""
        generator = self._batches(size)
        weakref.finalize(generator, self.close)
        return generator

    def _batches(self, size: int) -> Iterator[RowBatch]:
        header, width, reader, raw = self.header, len(self.header), self._reader, self._raw.text
        values: list[list[str]] = []
        lines: list[int] = []
        rejections: list[tuple[int, RawItem]] = []

        def reject(start: int, error: str) -> None:
            rejections.append((len(values), RawItem(record=None, line=start, error=error,
                                                    raw_text=raw(start, reader.line_num))))

        try:
            while True:
                if len(values) + len(rejections) >= size:
                    yield RowBatch(header, values, lines, rejections)
                    values, lines, rejections = [], [], []
                start = reader.line_num + 1
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
                yield RowBatch(header, values, lines, rejections)
        finally:
            self.close()


def _flatten(batches: Iterator[RowBatch]) -> Iterator[RawItem]:
    for batch in batches:
        yield from batch.items()
