"""Fixtures for connector tests: the real local HTTP server, a raw-socket server for
misbehaving upstreams (slow drip, stalls, truncation), and source factories.

No database is needed here; connectors only read upstreams.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.sources_config import SourceConfig
from tests.support.http_server import LocalHTTPServer, Request, Response
from workers.sources.http import HttpFetcher
from workers.sources.retry import RetryPolicy

CASES = Path(__file__).resolve().parents[2] / "cases" / "sources"

# Fast but real retries: backoff still happens, in milliseconds.
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=5.0, max_total_s=20.0)


@pytest.fixture
def server() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer() as running:
        yield running


@pytest.fixture
def cases() -> Path:
    return CASES


@pytest.fixture
def make_source() -> Callable[..., SourceConfig]:
    """SourceConfig with test defaults; keyword arguments override any field."""

    def build(kind: str = "http_json", **fields: Any) -> SourceConfig:
        defaults: dict[str, Any] = {"name": "t", "kind": kind, "id_field": "id"}
        return SourceConfig(**{**defaults, **fields})

    return build


@pytest.fixture
def fetcher_for() -> Callable[..., HttpFetcher]:
    """A fetcher with the source's deadline/cap/secrets and a fast retry policy."""

    def build(source: SourceConfig, retry: RetryPolicy = FAST_RETRY) -> HttpFetcher:
        return HttpFetcher.for_source(source, retry=retry)

    return build


@pytest.fixture
def fast_retry() -> RetryPolicy:
    return FAST_RETRY


@pytest.fixture
def timed() -> type[Timed]:
    """The Timed handler class (fixtures are how test modules reach conftest helpers)."""
    return Timed


@pytest.fixture
def isolated_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at an empty directory, so tests can see every temp file a connector leaves."""
    import tempfile

    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


class Timed:
    """Records when each request reached a handler, to measure the client's backoff."""

    def __init__(self, responses: list[Response]):
        self.responses = list(responses)
        self.times: list[float] = []

    def __call__(self, request: Request) -> Response:
        self.times.append(time.monotonic())
        return self.responses[min(len(self.times), len(self.responses)) - 1]


class RawServer:
    """A TCP server whose per-connection behaviour is a function of the socket.

    For upstreams the well-behaved LocalHTTPServer cannot imitate: bodies dripped byte
    by byte, connections stalled mid-body, bodies cut short.
    """

    def __init__(self, behaviour: Callable[[socket.socket], None]):
        self.connections = 0
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                self.request.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                try:
                    behaviour(self.request)
                except OSError:
                    pass  # the client gave up, as it should

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    started: list[RawServer] = []

    def start(behaviour: Callable[[socket.socket], None]) -> RawServer:
        running = RawServer(behaviour).__enter__()
        started.append(running)
        return running

    yield start
    for running in started:
        running.__exit__()
