"""A real local HTTP server for tests: routes are Python callables or canned responses.

Each handler receives the request (path, query, headers) and returns a Response; the
server records every request so tests can assert what the connector sent upstream. A
body may be an iterable of byte strings, written as it is produced (chunked, unless the
response declares its Content-Length), so a test can serve more than it could hold.
ServedFile serves a file as a web server does: validators, Range requests, versions.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes | str | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[[Request], Response]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up early (deadline tests, killed workers) are expected here.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class LocalHTTPServer:
    """Start with `with LocalHTTPServer() as server:`; add routes with `server.route(path, handler)`.

    `host` is any loopback address: 127.0.0.2 is another host than 127.0.0.1 to a client.
    `send_buffer` sets each connection's socket send buffer (SO_SNDBUF): on loopback the
    kernel otherwise lets a server queue megabytes ahead of a client that stopped reading,
    which a test counting the bytes a server sent would count as read.
    """

    def __init__(self, host: str = "127.0.0.1", *, send_buffer: int | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[Request] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                if send_buffer is not None:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                outer.requests.append(request)
                handler = outer.routes.get(parts.path)
                response = handler(request) if handler else Response(404, b'{"error": "no route"}')
                body = response.body.encode() if isinstance(response.body, str) else response.body
                streamed = not isinstance(body, bytes)
                chunked = streamed and "Content-Length" not in response.headers
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif "Content-Length" not in response.headers:
                    assert isinstance(body, bytes)
                    self.send_header("Content-Length", str(len(body)))
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD" or response.status == 304:
                    return
                if isinstance(body, bytes):
                    self.wfile.write(body)
                    return
                for piece in body:
                    if chunked and piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    elif piece:
                        self.wfile.write(piece)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_HEAD = _serve

        self._server = _QuietServer((host, 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, path: str, handler: Handler | Response) -> None:
        self.routes[path] = handler if callable(handler) else (lambda _request, r=handler: r)

    def __enter__(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Content:
    """A file's bytes, produced from any offset: held whole, or generated (`size`, `chunks`)."""

    def __init__(self, data: bytes = b"", *, size: int | None = None,
                 chunks: Callable[[int], Iterator[bytes]] | None = None):
        self.size = len(data) if chunks is None else size
        self._data = data
        self._chunks = chunks

    def read_from(self, start: int) -> Iterator[bytes]:
        if self._chunks is not None:
            yield from self._chunks(start)
            return
        for at in range(start, len(self._data), 16 * 1024):
            yield self._data[at:at + 16 * 1024]


class ServedFile:
    """A route serving one file as a web server does: Content-Length, an ETag and a
    Last-Modified per version, and, with `ranges`, `Accept-Ranges: bytes` and Range requests
    (`bytes=N-`) answered 206, or 416 past the end, under If-Range (a stale validator gets the
    whole new version, 200). Without `ranges` a Range header is ignored (200, the whole file).

    `replace()` publishes a new version. `served` counts the body bytes written; `cut_at`
    (byte positions, each used once) ends a response's connection when its body reaches
    that byte of the file, as a reset does.
    """

    def __init__(self, content: bytes | Content, *, ranges: bool = True, validators: bool = True):
        self.ranges = ranges
        self.validators = validators
        self.version = 0
        self.served = 0
        self.cut_at: list[int] = []
        self.replace(content)

    def replace(self, content: bytes | Content) -> None:
        self.content = content if isinstance(content, Content) else Content(content)
        self.version += 1

    @property
    def etag(self) -> str:
        return f'"v{self.version}"'

    @property
    def last_modified(self) -> str:
        return f"Wed, 0{self.version} Dec 2026 10:00:00 GMT"

    def __call__(self, request: Request) -> Response:
        size = self.content.size
        assert size is not None
        headers = {"ETag": self.etag, "Last-Modified": self.last_modified} if self.validators else {}
        if self.ranges:
            headers["Accept-Ranges"] = "bytes"
        start = self._range_start(request)
        if start is not None and start >= size:
            return Response(416, b"", headers={**headers, "Content-Range": f"bytes */{size}"}, content_type="text/csv")
        if start is None:
            start, status = 0, 200
        else:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        headers["Content-Length"] = str(size - start)
        return Response(status, self._body(start), headers=headers, content_type="text/csv")

    def _range_start(self, request: Request) -> int | None:
        wanted = request.headers.get("range", "")
        if not self.ranges or not wanted.startswith("bytes=") or not wanted.endswith("-"):
            return None
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range not in (self.etag, self.last_modified):
            return None  # another version than the client holds: the whole of this one
        return int(wanted[len("bytes="):-1])

    def _body(self, start: int) -> Iterator[bytes]:
        at = start
        for piece in self.content.read_from(start):
            cut = next((c for c in self.cut_at if at <= c < at + len(piece)), None)
            if cut is not None:
                self.cut_at.remove(cut)
                self.served += cut - at
                yield piece[:cut - at]
                raise ConnectionAbortedError("cut by the test")
            self.served += len(piece)
            at += len(piece)
            yield piece
