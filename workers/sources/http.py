"""The one place where HTTP failures are classified, bounded and retried.

Every connector fetches through HttpFetcher, so the rules hold everywhere alike:

* a TOTAL deadline per request (headers and body together), because httpx's own
  timeouts are per socket operation and a server dripping one byte a second would
  otherwise never time out;
* a size cap per response, checked while streaming (after decompression, so a gzip
  bomb is stopped too), so one bad upstream cannot exhaust a worker's memory or disk;
* neither for a body read as a stream (stream(): a CSV file of any size), whose reader
  keeps one row at a time and whose fetch segment decides how long it reads; there a read
  that waits timeout_s, or a body slower than STREAM_FLOOR_BYTES per timeout_s of waiting,
  is a TransientError instead, which its reader retries by reconnecting at the byte it
  reached (remote_file.py);
* 429, 408, 5xx, timeouts, resets and truncated bodies are TransientError (retried here
  with jittered backoff honouring Retry-After); other 4xx and undecodable bodies are
  PermanentError;
* error messages never contain header values or the query string, since either may
  carry a secret; transport exceptions are re-raised `from None` so a traceback does
  not print them either;
* redirects are followed here, hop by hop, under the source's RedirectPolicy
  (workers/sources/redirects.py): the configured headers never leave the source's own
  origin, and a refused redirect is a PermanentError naming the host.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import httpx

from app.core.redaction import redact
from app.core.sources_config import SourceConfig
from workers.sources.base import PermanentError, TransientError
from workers.sources.files import READ_CHUNK_BYTES
from workers.sources.redirects import RedirectPolicy, redirect_location
from workers.sources.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "ingest/0.1"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 100 * 1024 * 1024
SPOOL_IN_MEMORY_BYTES = 1024 * 1024  # a spooled body larger than this waits on disk
# A streamed body must bring at least this much per timeout_s spent waiting for it: a server
# dripping a byte at a time would otherwise never trip the per-read timeout.
STREAM_FLOOR_BYTES = 64 * 1024
_EXCERPT_BYTES = 2048
_EXCERPT_CHARS = 200


class HTTPStatusError(PermanentError):
    """An upstream answered with a status that retrying will not change (most 4xx)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FetchedResponse:
    """A complete response: status, headers, the whole body (within the cap) and parsed Link header."""

    status: int
    url: str
    headers: httpx.Headers
    body: bytes
    links: dict[str, dict[str, str]]

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    def validators(self) -> dict[str, str | None]:
        """The ETag / Last-Modified to send next time (None clears a stale stored value)."""
        return {"etag": self.headers.get("etag"), "last_modified": self.headers.get("last-modified")}


@dataclass(slots=True)
class SpooledResponse:
    """A response whose body waits in a temporary file (in memory while small): read it in
    chunks, so a large body is never held whole. The caller owns it and must close() it."""

    head: FetchedResponse  # status, url, headers and links; its body is empty
    file: IO[bytes]

    def chunks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(READ_CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        self.file.close()


def describe_url(url: str | httpx.URL) -> str:
    """Scheme, host and path only: the query string may carry an api key or a cursor blob."""
    try:
        parsed = httpx.URL(str(url))
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(parsed.copy_with(query=None, fragment=None))[:300]


class _Watchdog:
    """Shuts the socket down at the deadline, so a stalled body read returns at once.

    httpx applies its read timeout to each socket read, so without this a server that
    stalls mid-body could hold a request for a full read timeout past the deadline.
    The lock makes sure the socket is never touched after the response was released
    (it may be back in the connection pool then).
    """

    def __init__(self, response: httpx.Response, deadline: float):
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire, args=(sock,))
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain-socket method: also safe under TLS
            except OSError:
                pass

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


@dataclass(slots=True)
class _Exchange:
    response: httpx.Response
    deadline: float
    where: str
    watchdog: _Watchdog

    def timed_out(self) -> bool:
        return self.watchdog.fired or time.monotonic() >= self.deadline


class BodyStream:
    """A response whose body is read as it arrives, for a file of any size (a CSV export).

    Unlike get(), no size cap (its reader keeps a row at a time, whatever the file's size)
    and no total deadline (a large file takes as long as it takes; the fetch segment decides
    how long it reads, then closes it). What bounds it instead: each read waits at most
    timeout_s for data, and every timeout_s spent waiting must bring STREAM_FLOOR_BYTES.
    Only time spent waiting counts, not time the reader spends between reads (storing a
    chunk), which would otherwise make a fast server look slow. Failures are classified as
    everywhere: a stall, a reset or a body cut short is a TransientError, a bad
    content-encoding a PermanentError. The caller must close() it.
    """

    def __init__(self, exchange: _Exchange, stack: ExitStack, timeout_s: float):
        response = exchange.response
        self.status = response.status_code
        self.headers = response.headers
        self.url = str(response.url)
        self.where = exchange.where
        self._stack = stack
        self._timeout_s = timeout_s
        self._chunks = response.iter_bytes() if self.status not in (304, 416) else iter(())
        self._chunk = b""
        self._at = 0  # bytes of _chunk already returned
        self._waited = 0.0  # seconds spent waiting in the current window
        self._window_bytes = 0

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer when fewer have arrived); b"" at the end of the body."""
        if self._at >= len(self._chunk):
            self._chunk, self._at = self._next_chunk(), 0
        chunk, at = self._chunk, self._at
        if at == 0 and size >= len(chunk):
            self._at = len(chunk)
            return chunk
        self._at = min(len(chunk), at + size)
        return chunk[at:self._at]

    def _next_chunk(self) -> bytes:
        started = time.monotonic()
        try:
            chunk = next(self._chunks, b"")
        except httpx.DecodingError:
            raise PermanentError(f"GET {self.where}: body could not be decoded (bad content-encoding)") from None
        except httpx.TimeoutException:
            raise TransientError(f"GET {self.where}: body stalled: no data for {self._timeout_s:g}s") from None
        except httpx.TransportError as exc:
            # RemoteProtocolError here is a body cut short of its Content-Length.
            raise TransientError(f"GET {self.where}: body incomplete: {type(exc).__name__}") from None
        self._waited += time.monotonic() - started
        self._window_bytes += len(chunk)
        if self._waited >= self._timeout_s:
            if chunk and self._window_bytes < STREAM_FLOOR_BYTES:
                raise TransientError(
                    f"GET {self.where}: body too slow: {self._window_bytes} bytes in {self._waited:.0f}s of waiting"
                )
            self._waited, self._window_bytes = 0.0, 0
        return chunk

    def close(self) -> None:
        self._stack.close()


class HttpFetcher:
    """Sync HTTP GETs with a total deadline, a size cap, classification and bounded retries.

    One fetcher (one connection pool) serves all the pages of one extraction; close it, or
    use it as a context manager, when done.
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry: RetryPolicy | None = None,
        secrets: Iterable[str] = (),
        redirects: RedirectPolicy | None = None,
        client: httpx.Client | None = None,
    ):
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.retry = retry or RetryPolicy()
        self.redirects = redirects or RedirectPolicy()
        self._secrets = [s for s in secrets if s]
        # Redirects are followed by _exchange, never by httpx: it would carry custom headers to any host.
        self._client = client or httpx.Client(follow_redirects=False, headers={"User-Agent": USER_AGENT})
        self._owns_client = client is None

    @classmethod
    def for_source(cls, source: SourceConfig, retry: RetryPolicy | None = None) -> HttpFetcher:
        """A fetcher with the source's deadline and cap, redacting every header value it may send."""
        secrets = [*source.secret_values(), *source.resolved_headers().values()]
        return cls(
            timeout_s=source.timeout_s,
            max_response_bytes=source.max_response_bytes,
            retry=retry,
            secrets=secrets,
            redirects=RedirectPolicy.for_source(source.url, source.redirect_hosts),
        )

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public operations -------------------------------------------------------------

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> FetchedResponse:
        """GET the whole body (retrying transient failures); a 304 comes back with `not_modified`."""
        conditional = _conditional_headers(etag, last_modified)
        secrets = [*self._secrets, *(headers or {}).values()]

        def attempt() -> FetchedResponse:
            with self._exchange(url, params, headers or {}, conditional, secrets) as exchange:
                response = exchange.response
                body = bytearray()
                if response.status_code != 304:
                    self._stream_body(exchange, body.extend)
                return _fetched(response, bytes(body))

        return self._with_retries(attempt, secrets)

    def get_spooled(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> SpooledResponse:
        """GET like get(), the body spooled to a temporary file instead of kept in memory."""
        conditional = _conditional_headers(etag, last_modified)
        secrets = [*self._secrets, *(headers or {}).values()]

        def attempt() -> SpooledResponse:
            with self._exchange(url, params, headers or {}, conditional, secrets) as exchange:
                response = exchange.response
                spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, prefix="ingest-")
                try:
                    if response.status_code != 304:
                        self._stream_body(exchange, spool.write)
                except BaseException:
                    spool.close()
                    raise
                return SpooledResponse(head=_fetched(response, b""), file=spool)

        return self._with_retries(attempt, secrets)

    def stream(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        range_from: int | None = None,
        if_range: str | None = None,
    ) -> BodyStream:
        """GET and return at the response headers: the body is read as it arrives (BodyStream),
        without size cap or total deadline. Failures before the body are retried as in get().

        `range_from` asks for the body from that byte on (`Range: bytes=N-`, unencoded, so
        that byte offsets are the file's own), under `if_range` (an ETag or Last-Modified:
        a server whose file changed answers 200 with the whole new file instead); a server
        may ignore Range and answer 200 anyway. A 416 (the range starts at or past the end)
        comes back as a BodyStream with status 416 and no body. The caller must close it.
        """
        conditional = _conditional_headers(etag, last_modified)
        if range_from is not None:
            conditional["Range"] = f"bytes={range_from}-"
            conditional["Accept-Encoding"] = "identity"
            if if_range:
                conditional["If-Range"] = if_range
        secrets = [*self._secrets, *(headers or {}).values()]
        tolerated = (416,) if range_from is not None else ()

        def attempt() -> BodyStream:
            stack = ExitStack()
            try:
                exchange = stack.enter_context(
                    self._exchange(url, None, headers or {}, conditional, secrets, streaming=True, tolerated=tolerated)
                )
                return BodyStream(exchange, stack, self.timeout_s)
            except BaseException:
                stack.close()
                raise

        return self._with_retries(attempt, secrets)

    # -- retries ---------------------------------------------------------------------

    def _with_retries(self, attempt: Callable[[], T], secrets: list[str]) -> T:
        started = time.monotonic()
        failures = 0
        while True:
            try:
                return attempt()
            except TransientError as exc:
                failures += 1
                delay = self.retry.delay_s(failures, exc.retry_after_s, time.monotonic() - started)
                if delay is None:
                    if failures == 1:
                        raise
                    raise TransientError(f"{exc} (gave up after {failures} attempts)", exc.retry_after_s) from None
                log.warning("transient upstream failure, retrying in %.2fs: %s", delay, redact(str(exc), secrets))
                time.sleep(delay)

    # -- one attempt -----------------------------------------------------------------

    @contextmanager
    def _exchange(
        self,
        url: str,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        conditional: dict[str, str],
        secrets: list[str],
        *,
        streaming: bool = False,
        tolerated: tuple[int, ...] = (),
    ) -> Iterator[_Exchange]:
        """Send the request, follow its redirects, classify what comes back; yields a 2xx or 304
        (or a status in `tolerated`).

        `headers` are the source's configured ones (often secret): they go only to the source's
        own origin (RedirectPolicy). `conditional` (validators) follow every allowed redirect.
        `streaming`: the total deadline ends with the headers; each read of the body then
        waits at most timeout_s (see BodyStream).
        """
        deadline = time.monotonic() + self.timeout_s
        where = describe_url(url)
        try:
            # httpx would replace the url's own query with `params`; a next-page link needs them merged.
            start = httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"GET {where}: {redact(str(exc), secrets)}") from None
        target, with_headers, hops = start, self.redirects.sends_headers(start, start), 0
        while True:
            sent = {**headers, **conditional} if with_headers else dict(conditional)
            response = self._send(target, sent, deadline, where, secrets)
            location = redirect_location(response)
            if location is None:
                break
            response.close()
            hops += 1
            if hops > self.redirects.max_redirects:
                raise PermanentError(f"GET {where}: more than {self.redirects.max_redirects} redirects")
            hop = self.redirects.follow(start, response.url, location, where)
            target, with_headers = hop.url, hop.with_headers
        watchdog = _Watchdog(response, deadline)
        # A stalled read should not wait a whole timeout_s past the deadline either.
        timeouts = response.request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            timeouts["read"] = max(0.01, deadline - time.monotonic())
        exchange = _Exchange(response, deadline, where, watchdog)
        try:
            if response.status_code not in tolerated:
                self._check_status(exchange, secrets)
            if streaming:
                watchdog.cancel()
                if isinstance(timeouts, dict):
                    timeouts["read"] = self.timeout_s
            yield exchange
        finally:
            watchdog.cancel()
            response.close()

    def _send(
        self, target: httpx.URL, headers: dict[str, str], deadline: float, where: str, secrets: list[str]
    ) -> httpx.Response:
        """One request of a redirect chain, its transport failures classified."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransientError(f"GET {where}: exceeded the total deadline of {self.timeout_s:g}s")
        try:
            request = self._client.build_request("GET", target, headers=headers, timeout=remaining)
            return self._client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            raise TransientError(f"GET {where}: no response within {self.timeout_s:g}s") from None
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            # h11 quotes the offending header value in its message: say nothing about it.
            raise PermanentError(f"GET {where}: request could not be sent (invalid header value?)") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentError(f"GET {where}: {redact(str(exc), secrets)}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"GET {where}: {type(exc).__name__}: {redact(str(exc), secrets)}") from None

    def _check_status(self, exchange: _Exchange, secrets: list[str]) -> None:
        status = exchange.response.status_code
        if 200 <= status < 300 or status == 304:
            return
        detail = f"GET {exchange.where}: HTTP {status}{self._excerpt(exchange, secrets)}"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(exchange.response.headers.get("retry-after"))
            raise TransientError(detail, retry_after_s=retry_after)
        raise HTTPStatusError(detail, status)

    def _excerpt(self, exchange: _Exchange, secrets: list[str]) -> str:
        """A short, redacted start of an error body: often the only hint of what went wrong."""
        buffer = bytearray()
        try:
            for chunk in exchange.response.iter_bytes():
                buffer.extend(chunk)
                if len(buffer) >= _EXCERPT_BYTES or exchange.timed_out():
                    break
        except (httpx.TransportError, httpx.DecodingError):
            pass  # the status already tells the story
        text = " ".join(buffer[:_EXCERPT_BYTES].decode("utf-8", "replace").split())
        if not text:
            return ""
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS] + "..."
        return f": {redact(text, secrets)}"

    def _stream_body(self, exchange: _Exchange, sink: Callable[[bytes], Any]) -> None:
        """Feed the decoded body to `sink`, enforcing the size cap and the total deadline."""
        response, cap = exchange.response, self.max_response_bytes
        too_large = PermanentError(f"GET {exchange.where}: response larger than {cap} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        total = 0
        overdue = f"GET {exchange.where}: exceeded the total deadline of {self.timeout_s:g}s"
        try:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > cap:
                    raise too_large
                if exchange.timed_out():
                    raise TransientError(overdue)
                sink(chunk)
        except httpx.DecodingError:
            raise PermanentError(f"GET {exchange.where}: body could not be decoded (bad content-encoding)") from None
        except httpx.TransportError as exc:
            if exchange.timed_out():
                raise TransientError(overdue) from None
            # RemoteProtocolError here is a body cut short of its Content-Length: worth another try.
            raise TransientError(f"GET {exchange.where}: body incomplete: {type(exc).__name__}") from None


def _fetched(response: httpx.Response, body: bytes) -> FetchedResponse:
    links = {str(rel): link for rel, link in response.links.items()}
    return FetchedResponse(
        status=response.status_code, url=str(response.url), headers=response.headers, body=body, links=links
    )


def _conditional_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if etag:
        merged["If-None-Match"] = etag
    if last_modified:
        merged["If-Modified-Since"] = last_modified
    return merged
