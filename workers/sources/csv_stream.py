"""A CSV file over HTTP, read as it arrives, in resumable segments: no size cap, no temp file.

The body goes straight from the socket into the csv reader (StreamLines), a row at a time,
so a file of any size is read in bounded memory. After every batch of rows a Boundary
holds the byte offset and physical line of the next row, the rows so far, the encoding,
the header, and the file's Identity (ETag, Last-Modified, size, a hash of its first
block; remote_file.py): a later segment asks for the rest from that byte (a Range
request) or re-reads and skips to it, and a file replaced in between is read again from
the top (`Extraction.restarted`).

Encoding: the first block (64 KiB) decides, since a stream cannot be checked whole before
it is read: valid UTF-8 (a BOM is skipped) makes it UTF-8, else Latin-1. Bytes further on
that are not valid UTF-8 are read as Latin-1 (the LATIN1_FALLBACK error handler): no row
is lost or rejected for them, and the rest of the file still reads as UTF-8.

Unchanged since the last run: the first segment sends the stored ETag / Last-Modified (a
304 ends the run). The whole file's SHA-256 is known only once one segment read it from
the top to the end; it is stored then (a server without validators is recognised by it
when its whole file fits in the first block, before any parsing). A file read in several
segments stores no hash, so the next run reads it again (its unchanged rows cost little:
the raw digests recognise them).
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.core.sources_config import SourceConfig
from workers.sources.base import FetchState
from workers.sources.csv_rows import RAW_TEXT_LIMIT, CsvRows, raw_excerpt
from workers.sources.http import HttpFetcher, describe_url
from workers.sources.remote_file import Identity, RemoteFile

LATIN1_FALLBACK = "ingest-latin1-fallback"
READ_BLOCK = 64 * 1024
# The header goes in every committed position; one longer than this (in characters) is
# read again from the top of the file by a resumed segment instead.
HEADER_LIMIT = 64 * 1024


def _latin1_fallback(error: UnicodeError) -> tuple[str, int]:
    """Decode bytes that are not valid UTF-8 as Latin-1, which decodes any byte."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error(LATIN1_FALLBACK, _latin1_fallback)


def decide_encoding(head: bytes, *, whole: bool) -> str:
    """UTF-8 if the first block is valid UTF-8 (a sequence cut at its end may go on), else Latin-1."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


class StreamLines:
    """The lines of a RemoteFile, for the csv reader, and the bytes they took.

    A text stream over a socket cannot tell() where it is, so the lines are cut here from
    the bytes, whose count then says exactly where the next row starts. Lines end at
    `\\n`, `\\r\\n` or `\\r`, as in a file opened with newline="" (bytes.splitlines cuts
    there), and each is decoded on its own (a line end never falls inside a UTF-8
    sequence). A stream cannot be read twice, so the raw text of the row being read is
    kept, up to RAW_TEXT_LIMIT, for when it is rejected: `mark` empties it before a row.
    """

    def __init__(self, remote: RemoteFile, encoding: str, *, on_end: Callable[[], None]):
        assert remote.identity is not None
        self.size = remote.identity.size
        self._remote = remote
        self._consumed = remote.offset  # bytes of the lines handed out, from the top of the file
        self._row: list[str] = []
        self.mark: Callable[[], None] | None = self._row.clear
        self.lines = self._lines(encoding, on_end)

    def _lines(self, encoding: str, on_end: Callable[[], None]) -> Iterator[str]:
        read, row = self._remote.read, self._row
        errors = LATIN1_FALLBACK if encoding == "utf-8" else "strict"  # Latin-1 decodes any byte
        bom = self._remote.offset == 0 and encoding == "utf-8"
        kept = 0  # characters in `row`
        carry: list[bytes] = []  # the start of a line whose end has not arrived
        while True:
            block = read(READ_BLOCK)
            if bom:
                bom = False
                if block.startswith(codecs.BOM_UTF8):  # not part of the first column's name
                    self._consumed += len(codecs.BOM_UTF8)
                    block = block[len(codecs.BOM_UTF8):]
            if not block:
                lines = [b"".join(carry)] if carry else []
            elif b"\n" not in block and b"\r" not in block:
                carry.append(block)  # a long line (a large quoted field): joined once, at its end
                continue
            else:
                if carry:
                    carry.append(block)
                    block = b"".join(carry)
                    carry = []
                lines = block.splitlines(True)
                if not lines[-1].endswith(b"\n"):
                    carry.append(lines.pop())  # unfinished, or a "\r" whose "\n" may come next
            for raw in lines:
                self._consumed += len(raw)
                text = raw.decode(encoding, errors)
                if not row:
                    kept = 0
                if kept < RAW_TEXT_LIMIT:
                    row.append(text)
                    kept += len(text)
                yield text
            if not block:
                break
        on_end()

    def offset(self) -> int:
        return self._consumed

    def bytes_read(self) -> int:
        return self._consumed

    def move_to(self, offset: int) -> None:
        """Skip the lines before `offset` (a resumed segment that read the header again)."""
        while self._consumed < offset and next(self.lines, None) is not None:
            pass

    def raw_text(self, first: int, last: int) -> str:
        return raw_excerpt(self._row, sum(map(len, self._row)))

    def close(self) -> None:
        self._remote.close()


@dataclass
class RemoteRows:
    """A CSV file over HTTP, opened: its rows, or word that it did not change."""

    rows: CsvRows | None
    not_modified: bool = False
    new_state: dict[str, Any] = field(default_factory=dict)
    restarted: str | None = None


def open_remote(
    source: SourceConfig, state: FetchState, fetcher: HttpFetcher | None, resume: dict[str, Any] | None
) -> RemoteRows:
    """Open the file at the top, or at `resume` (a Boundary's position); the rows own the
    connection (and the fetcher, when it is ours) and close them when done."""
    assert source.url is not None
    remote = RemoteFile(fetcher or HttpFetcher.for_source(source), source.url, source.resolved_headers(),
                        owns_fetcher=fetcher is None)
    try:
        return _open(source, state, remote, resume)
    except BaseException:
        remote.close()
        raise


def _open(source: SourceConfig, state: FetchState, remote: RemoteFile, resume: dict[str, Any] | None) -> RemoteRows:
    if resume is None:
        remote.open(etag=state.etag, last_modified=state.last_modified)
        if remote.not_modified:
            remote.close()
            return RemoteRows(rows=None, not_modified=True)
    else:
        # Without the header in the position, it is read again from the top.
        remote.open_at(resume["offset"] if resume["header"] is not None else 0, Identity.load(resume["identity"]))
    identity = remote.identity
    assert identity is not None
    new_state: dict[str, Any] = {"etag": identity.etag, "last_modified": identity.last_modified, "file_hash": None}

    def at_end() -> None:
        new_state["file_hash"] = remote.whole_sha256()

    where = describe_url(source.url or "")
    if resume is None or remote.restarted:
        head = remote.head
        if resume is None and remote.at_end and hashlib.sha256(head).hexdigest() == state.file_hash:
            remote.close()  # the whole file was in the first block, and it did not change
            return RemoteRows(rows=None, not_modified=True)
        encoding = decide_encoding(head, whole=remote.at_end)
        position: dict[str, Any] = {"identity": identity.dump(), "encoding": encoding}
        rows = CsvRows.over(StreamLines(remote, encoding, on_end=at_end), source.delimiter, where,
                            max_field_chars=source.max_field_chars, resume=position, header=None)
        # The position every boundary of the rows holds: the header joins it once read.
        position["header"] = rows.header if sum(map(len, rows.header)) <= HEADER_LIMIT else None
    else:
        position = {key: resume[key] for key in ("identity", "encoding", "header")}
        rows = CsvRows.over(StreamLines(remote, resume["encoding"], on_end=at_end), source.delimiter, where,
                            max_field_chars=source.max_field_chars, resume={**position, **_place(resume)},
                            header=resume["header"])
    return RemoteRows(rows=rows, new_state=new_state, restarted=remote.restarted)


def _place(resume: dict[str, Any]) -> dict[str, Any]:
    return {key: resume[key] for key in ("offset", "line", "rows")}
