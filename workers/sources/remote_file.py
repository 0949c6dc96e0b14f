"""A file on a web server, read as a stream from any byte offset: across fetch segments, and
across the connection failures of a stream that may last hours.

A version of the file is known by its Identity: the ETag and Last-Modified the server sent,
its size (Content-Length), and a hash of its first block. A stream that resumes at byte N
of a version asks for `Range: bytes=N-` under `If-Range` (its ETag, else Last-Modified),
when the server said it accepts byte ranges and gave a validator; else, or when the
server ignores the range and answers 200, it reads the body from the top and skips N
bytes, once the head, the size and the validators showed the same version. Whatever
else it finds is another version: the stream then starts at the top of that one, and
says why in `restarted`, for the caller to read it whole (never two versions in one run).

A body served with a content-encoding (gzip) is read decoded, and its offsets count
decoded bytes, which a Range request cannot address: such a file resumes by skipping.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from workers.sources.base import TransientError
from workers.sources.files import HEAD_BYTES
from workers.sources.http import BodyStream, HttpFetcher, describe_url

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Identity:
    """What tells one version of a remote file from another without reading it all."""

    etag: str | None
    last_modified: str | None
    size: int | None  # the file's length in bytes, when the server said (and sent it unencoded)
    head_sha256: str  # of the first HEAD_BYTES bytes (all of them, in a shorter file)
    ranges: bool  # a Range request may resume it: Accept-Ranges: bytes, a validator, no content-encoding

    @classmethod
    def of(cls, body: BodyStream, head: bytes) -> Identity:
        headers = body.headers
        encoded = _encoded(body)
        length = headers.get("content-length", "")
        etag, last_modified = headers.get("etag"), headers.get("last-modified")
        strong = bool(etag and not etag.startswith("W/")) or bool(last_modified)
        return cls(
            etag=etag,
            last_modified=last_modified,
            size=int(length) if length.isdigit() and not encoded else None,
            head_sha256=hashlib.sha256(head).hexdigest(),
            ranges="bytes" in headers.get("accept-ranges", "").lower() and not encoded and strong,
        )

    @classmethod
    def load(cls, stored: dict[str, Any]) -> Identity:
        return cls(**stored)

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    def validator(self) -> str | None:
        """What If-Range may carry: a strong ETag (a weak one never matches there), else the date."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs(self, other: Identity) -> str | None:
        """What shows `other` to be another version than this one (None: the same)."""
        for name in ("etag", "last_modified", "size", "head_sha256"):
            if getattr(self, name) != getattr(other, name):
                return {"etag": "ETag", "last_modified": "Last-Modified", "size": "size",
                        "head_sha256": "first block"}[name]
        return None


class Changed(Exception):
    """The file is now another version than the one a stream was reading."""


class _BodyFailed(TransientError):
    """A transient failure while reading a body (the fetcher retries only up to its headers)."""


class RemoteFile:
    """The bytes of one version of a remote file, from a byte offset on.

    open() starts at the top (conditionally: `not_modified` on a 304); open_at() at an offset
    of a known version, or at the top of a new one (`restarted` says why). read() returns
    the bytes in order; after a transient failure it reconnects at the byte it reached,
    under the fetcher's RetryPolicy (the count starts again once the stream gets past the
    byte where it last failed), so a long stream survives resets. A version change found
    then is a TransientError: the rows read so far belong to the old version.
    """

    def __init__(self, fetcher: HttpFetcher, url: str, headers: dict[str, str], *, owns_fetcher: bool = False):
        self.where = describe_url(url)
        self.identity: Identity | None = None
        self.offset = 0  # bytes before the next byte read() returns
        self.head = b""  # the first block, when the stream started at the top
        self.at_end = False  # the whole body has been read
        self.not_modified = False
        self.restarted: str | None = None
        self._fetcher, self._url, self._headers, self._owns_fetcher = fetcher, url, headers, owns_fetcher
        self._body: BodyStream | None = None
        self._pending = b""  # bytes read ahead (the head block), returned before the body's
        self._sha: Any = None  # of every byte from the top, while the stream started there
        self._failures = 0
        self._failed_at = -1
        self._first_failure = 0.0

    # -- opening -----------------------------------------------------------------------

    def open(self, *, etag: str | None, last_modified: str | None) -> None:
        """Start at the top; a 304 to the validators leaves `not_modified` set and nothing open."""

        def attempt() -> None:
            body = self._fetcher.stream(self._url, self._headers, etag=etag, last_modified=last_modified)
            if body.status == 304:
                body.close()
                self.not_modified = True
                return
            self._start_at_top(body)

        self._retrying(attempt)

    def open_at(self, offset: int, identity: Identity) -> None:
        """Start at `offset` of version `identity`, or at the top of the version served now."""
        try:
            self._retrying(lambda: self._seek(offset, identity))
        except Changed as exc:
            self.restarted = f"{self.where} changed since the run started reading it ({exc}): read from the top"

    def _start_at_top(self, body: BodyStream) -> None:
        self._body, self.offset, self._sha, self.at_end = body, 0, hashlib.sha256(), False
        head = self._read_head(body)
        self.identity = Identity.of(body, head)
        self.head = self._pending = head

    def _read_head(self, body: BodyStream) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < HEAD_BYTES:
            try:
                piece = body.read(HEAD_BYTES - size)
            except TransientError as exc:
                raise _BodyFailed(str(exc), exc.retry_after_s) from None
            if not piece:
                self.at_end = True
                break
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)

    def _seek(self, offset: int, identity: Identity) -> None:
        """Position the stream at `offset` of `identity`; raises Changed (the stream then at the
        top of the version now served) when that version is gone."""
        self._close_body()
        self.identity, self.head, self._pending, self._sha, self.at_end = identity, b"", b"", None, False
        body: BodyStream | None = None
        if identity.ranges and offset > 0:
            body = self._fetcher.stream(self._url, self._headers, range_from=offset, if_range=identity.validator())
            if body.status == 416 and offset == identity.size:
                # Nothing left to read; If-Range would have brought a new version whole instead.
                body.close()
                self._body, self.offset, self.at_end = None, offset, True
                return
            if body.status == 206 and _serves_range(body, offset, identity):
                self._body, self.offset = body, offset
                return
            if body.status != 200:  # a range that does not fit, or a 416 short of the end: read from the top
                body.close()
                body = None
        if body is None:
            body = self._fetcher.stream(self._url, self._headers)
        self._start_at_top(body)
        assert self.identity is not None
        difference = identity.differs(self.identity)
        if difference is not None:
            raise Changed(f"another {difference}")
        # The whole file's hash is of a stream that started at the top (see whole_sha256).
        self._sha = None
        self._skip_to(offset)

    def _skip_to(self, offset: int) -> None:
        """Read and drop the bytes before `offset` (a stream re-read from the top)."""
        while self.offset < offset:
            if not self.read(min(1024 * 1024, offset - self.offset)):
                # The same head, validators and size (none sent), yet shorter: another version
                # after all, to be read from its top.
                self._close_body()
                self._start_at_top(self._fetcher.stream(self._url, self._headers))
                raise Changed(f"now shorter than the {offset} bytes already read")

    # -- reading -----------------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end of the file."""
        if self._pending:
            piece, self._pending = self._pending[:size], self._pending[size:]
        else:
            piece = self._read_body(size)
        self.offset += len(piece)
        if self._sha is not None:
            self._sha.update(piece)
        return piece

    def _read_body(self, size: int) -> bytes:
        while True:
            if self._body is None:
                return b""
            try:
                piece = self._body.read(size)
            except TransientError as exc:
                self._recover(exc)
                continue
            if not piece:
                self.at_end = True
            return piece

    def _recover(self, failure: TransientError) -> None:
        """After a failure mid-body: wait as the retry policy says, then reconnect where the
        stream got to, in the same version; else raise."""
        self._wait_after(failure)
        assert self.identity is not None
        identity, sha, offset = self.identity, self._sha, self.offset
        try:
            self._retrying(lambda: self._seek(offset, identity))
        except Changed as exc:
            raise TransientError(
                f"{self.where} changed while being read, at byte {offset} ({exc}); the next run reads the new version"
            ) from None
        self._sha = sha  # the same bytes go on from the same place

    def _retrying(self, action: Callable[[], None]) -> None:
        """Run `action`, again after a failure of a body it read (its requests are retried by
        the fetcher already)."""
        while True:
            try:
                return action()
            except _BodyFailed as exc:
                self._close_body()
                self._wait_after(exc)

    def _wait_after(self, failure: TransientError) -> None:
        """Count the failure and sleep before the next try, or raise when the policy says stop.
        Failures in a row are counted: the count starts again once the stream gets past the
        byte where it last failed."""
        now = time.monotonic()
        if self.offset > self._failed_at:
            self._failures, self._first_failure = 0, now
        self._failures += 1
        self._failed_at = self.offset
        delay = self._fetcher.retry.delay_s(self._failures, failure.retry_after_s, now - self._first_failure)
        if delay is None:
            raise TransientError(f"{failure} (gave up after {self._failures} attempts at byte {self.offset})",
                                 failure.retry_after_s) from None
        log.warning("stream failed at byte %d, reconnecting in %.2fs: %s", self.offset, delay, failure)
        time.sleep(delay)

    def whole_sha256(self) -> str | None:
        """The SHA-256 of the whole file, once this stream read it from the top to the end
        (None for a stream opened at an offset: the bytes before it were read by another)."""
        if self._sha is None or not self.at_end:
            return None
        return str(self._sha.hexdigest())

    def _close_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        if self._owns_fetcher:
            self._fetcher.close()


def _serves_range(body: BodyStream, offset: int, identity: Identity) -> bool:
    """Whether a 206 holds the rest of version `identity` from `offset` on."""
    match = _CONTENT_RANGE.fullmatch(body.headers.get("content-range", "").strip())
    if match is None or int(match.group(1)) != offset:
        return False
    total = match.group(3)
    if identity.size is not None and total != "*" and int(total) != identity.size:
        return False
    if _encoded(body):
        return False
    # If-Range already asked for the same version; a server that honours Range but not
    # If-Range still names its version here.
    for name, value in (("etag", identity.etag), ("last-modified", identity.last_modified)):
        sent = body.headers.get(name)
        if sent is not None and sent != value:
            return False
    return True


def _encoded(body: BodyStream) -> bool:
    return body.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
