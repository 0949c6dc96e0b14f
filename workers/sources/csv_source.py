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

from app.sources_config import SourceConfig
from workers.sources.base import Extraction, FetchState, PermanentError, RawItem
from workers.sources.document import source_is_local
from workers.sources.files import ContentDigest, digest_file, local_path
from workers.sources.http import Download, HttpFetcher, describe_url

RAW_TEXT_LIMIT = 64 * 1024  # a runaway quoted field must not make one rejection megabytes long


def extract(source: SourceConfig, state: FetchState, fetcher: HttpFetcher | None = None) -> Extraction:
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
        rows = CsvRows(path, _encoding(digest), source.delimiter, where, temp=temp)
    except BaseException:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise
    return Extraction(items=rows.items(), new_state={"file_hash": digest.sha256, **validators})


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
    """utf-8-sig reads UTF-8 with or without a BOM (and drops the BOM from the first column name)."""
    return "utf-8-sig" if digest.is_utf8 else "latin-1"


class _LineTap:
    """Hands the csv reader one physical line at a time and keeps the lines of the current row.

    The csv module never reads ahead of the row it returns, so the lines kept between two
    rows are exactly the raw text of the row just returned, and the count of lines handed
    out gives each row's starting line number.
    """

    def __init__(self, handle: TextIO):
        self._handle = handle
        self._lines: list[str] = []
        self._kept = 0
        self.count = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._handle)
        self.count += 1
        if self._kept < RAW_TEXT_LIMIT:
            self._lines.append(line)
            self._kept += len(line)
        return line

    def take(self) -> str:
        """The raw text of the row just read, without its final line break."""
        text = "".join(self._lines)
        truncated = self._kept > RAW_TEXT_LIMIT
        self.drop()
        return text[:RAW_TEXT_LIMIT] + "...[truncated]" if truncated else text.rstrip("\r\n")

    def drop(self) -> None:
        """Forget the row just read (a good row needs no raw text: joining it would be wasted work)."""
        self._lines.clear()
        self._kept = 0


class CsvRows:
    """An open CSV file positioned after its header. Owns the file handle and any temp file.

    Both are released when the rows are exhausted or closed, or, if the items are never
    consumed, when the iterator is garbage collected.
    """

    def __init__(self, path: Path, encoding: str, delimiter: str, where: str, *, temp: Path | None = None):
        self.where = where
        self._temp = temp
        self._handle: TextIO = path.open("r", encoding=encoding, newline="")
        try:
            self._tap = _LineTap(self._handle)
            self._reader = csv.reader(self._tap, delimiter=delimiter)
            self.header = self._read_header()
        except BaseException:
            self._handle.close()
            raise

    def _read_header(self) -> list[str]:
        try:
            for row in self._reader:
                self._tap.drop()
                if not row:
                    continue  # leading blank lines
                if any("\x00" in name for name in row):
                    raise PermanentError(f"{self.where}: CSV header row contains a NUL byte")
                if all(not name.strip() for name in row):
                    raise PermanentError(f"{self.where}: CSV header row (line {self._tap.count}) is empty")
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
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def items(self) -> Iterator[RawItem]:
        generator = self._rows()
        weakref.finalize(generator, self.close)
        return generator

    def _rows(self) -> Iterator[RawItem]:
        width = len(self.header)
        try:
            while True:
                start = self._tap.count + 1
                try:
                    row = next(self._reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield RawItem(
                        record=None, line=start, error=f"unparsable CSV row: {exc}", raw_text=self._tap.take()
                    )
                    continue
                except UnicodeDecodeError:
                    raise PermanentError(f"{self.where}: file changed while being read (no longer UTF-8)") from None
                if len(row) == width and not any("\x00" in value for value in row):
                    self._tap.drop()
                    yield RawItem(record=dict(zip(self.header, row, strict=True)), line=start)
                elif not row:
                    self._tap.drop()  # blank line
                elif len(row) != width:
                    error = f"expected {width} fields as in the header, found {len(row)}"
                    yield RawItem(record=None, line=start, error=error, raw_text=self._tap.take())
                else:  # checked on the fields, not the raw text, which may be truncated
                    yield RawItem(record=None, line=start, error="row contains a NUL byte", raw_text=self._tap.take())
        finally:
            self.close()
