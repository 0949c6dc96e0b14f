"""HttpFetcher against real sockets: classification, retries, deadline, size cap, redaction."""

from __future__ import annotations

import gzip
import socket
import time
from email.utils import formatdate

import pytest

from tests.support.http_server import Request, Response
from workers.sources.base import PermanentError, TransientError
from workers.sources.http import HttpFetcher, HTTPStatusError
from workers.sources.retry import NO_RETRY, RetryPolicy

SECRET = "s3cr3t-token-value-4711"


def fetcher(**kwargs: object) -> HttpFetcher:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=5, max_total_s=20))
    return HttpFetcher(**kwargs)  # type: ignore[arg-type]


# -- success, conditional GET ----------------------------------------------------------


def test_get_returns_body_headers_links_and_sends_params(server) -> None:
    server.route(
        "/items",
        Response(200, b'[{"id": 1}]', headers={"ETag": '"v1"', "Link": '</items?page=2>; rel="next"'}),
    )
    with fetcher() as f:
        response = f.get(server.url + "/items", {"page": 1}, {"X-Trace": "abc"})
    assert response.status == 200
    assert response.body == b'[{"id": 1}]'
    assert response.links["next"]["url"] == "/items?page=2"
    assert response.validators() == {"etag": '"v1"', "last_modified": None}
    (request,) = server.requests
    assert request.query == {"page": "1"}
    assert request.headers["x-trace"] == "abc"
    assert "if-none-match" not in request.headers


def test_params_merge_with_the_urls_own_query(server) -> None:
    server.route("/q", Response(200, b"[]"))
    with fetcher() as f:
        f.get(server.url + "/q?fixed=1&page=1", {"page": 2, "since": "2026-01-01"})
    assert server.requests[0].query == {"fixed": "1", "page": "2", "since": "2026-01-01"}


def test_conditional_get_sends_validators_and_reports_304(server) -> None:
    def handler(request: Request) -> Response:
        if request.headers.get("if-none-match") == '"v1"':
            return Response(304, b"")
        return Response(200, b"[]", headers={"ETag": '"v1"'})

    server.route("/feed", handler)
    with fetcher() as f:
        response = f.get(server.url + "/feed", etag='"v1"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
    assert response.not_modified and response.body == b""
    assert server.requests[0].headers["if-modified-since"] == "Wed, 25 Nov 2026 10:00:00 GMT"


# -- retries ---------------------------------------------------------------------------


def test_429_with_retry_after_seconds_is_retried_after_the_delay(server, timed) -> None:
    handler = timed([Response(429, b"slow down", headers={"Retry-After": "1"}), Response(200, b"[]")])
    server.route("/r", handler)
    started = time.monotonic()
    with fetcher() as f:
        response = f.get(server.url + "/r")
    assert response.status == 200
    assert len(handler.times) == 2
    assert handler.times[1] - handler.times[0] >= 0.95
    assert time.monotonic() - started < 5


def test_503_with_retry_after_http_date_is_honoured(server) -> None:
    times: list[float] = []

    def handler(_request: object) -> Response:
        times.append(time.time())
        if len(times) == 1:  # dated when answered (one-second resolution): more than 1 s away
            return Response(503, b"", headers={"Retry-After": formatdate(times[0] + 2, usegmt=True)})
        return Response(200, b"{}")

    server.route("/r", handler)
    with fetcher() as f:
        assert f.get(server.url + "/r").status == 200
    assert times[1] >= int(times[0] + 2) - 0.05  # not before the date, however late the first answer came


def test_persistent_500_gives_up_after_bounded_attempts(server) -> None:
    server.route("/down", Response(500, b"internal error"))
    started = time.monotonic()
    with fetcher() as f, pytest.raises(TransientError) as info:
        f.get(server.url + "/down")
    assert len(server.requests) == 3
    assert "HTTP 500" in str(info.value) and "3 attempts" in str(info.value)
    assert time.monotonic() - started < 5


def test_total_retry_time_is_bounded(server) -> None:
    server.route("/down", Response(502, b""))
    policy = RetryPolicy(max_attempts=100, base_delay_s=0.2, max_delay_s=0.2, max_total_s=1.0, jitter=0.0)
    started = time.monotonic()
    with fetcher(retry=policy) as f, pytest.raises(TransientError):
        f.get(server.url + "/down")
    assert time.monotonic() - started < 2.0
    assert 3 <= len(server.requests) <= 6


def test_retry_after_beyond_max_delay_raises_at_once_for_the_caller_to_reschedule(server) -> None:
    server.route("/busy", Response(429, b"", headers={"Retry-After": "3600"}))
    with fetcher() as f, pytest.raises(TransientError) as info:
        f.get(server.url + "/busy")
    assert len(server.requests) == 1
    assert info.value.retry_after_s == 3600.0


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with fetcher(retry=NO_RETRY) as f, pytest.raises(TransientError):
            f.get(f"http://127.0.0.1:{port}/")


def test_truncated_body_is_transient_and_retried(server) -> None:
    server.route("/cut", Response(200, b'[{"id":', headers={"Content-Length": "100", "Connection": "close"}))
    with fetcher() as f, pytest.raises(TransientError) as info:
        f.get(server.url + "/cut")
    assert "incomplete" in str(info.value)
    assert len(server.requests) == 3


# -- permanent failures ----------------------------------------------------------------


def test_404_is_permanent_with_status_and_excerpt_and_not_retried(server) -> None:
    server.route("/other", Response(200, b"[]"))
    with fetcher() as f, pytest.raises(HTTPStatusError) as info:
        f.get(server.url + "/missing?api_key=hidden")
    assert isinstance(info.value, PermanentError)
    assert info.value.status == 404
    assert "HTTP 404" in str(info.value) and "no route" in str(info.value)
    assert "hidden" not in str(info.value)  # the query string may hold a key
    assert len(server.requests) == 1


def test_error_excerpt_is_short(server) -> None:
    server.route("/bad", Response(400, b"x" * 100_000))
    with fetcher() as f, pytest.raises(PermanentError) as info:
        f.get(server.url + "/bad")
    assert len(str(info.value)) < 400


def test_unsupported_scheme_is_permanent() -> None:
    with fetcher() as f, pytest.raises(PermanentError):
        f.get("ftp://example.invalid/file")


# -- secrets ---------------------------------------------------------------------------


def test_header_values_never_appear_in_error_messages(server) -> None:
    def echo(request: Request) -> Response:
        return Response(401, f"bad credentials: {request.headers.get('authorization')}")

    server.route("/private", echo)
    with fetcher(secrets=[SECRET]) as f, pytest.raises(PermanentError) as info:
        f.get(server.url + "/private", headers={"Authorization": f"Bearer {SECRET}"})
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent...
    assert SECRET not in str(info.value)  # ...and is not repeated
    assert "HTTP 401" in str(info.value) and "[redacted]" in str(info.value)


def test_invalid_header_value_error_does_not_quote_it(server) -> None:
    server.route("/x", Response(200, b"[]"))
    with fetcher() as f, pytest.raises(PermanentError) as info:
        f.get(server.url + "/x", headers={"Authorization": f"Bearer {SECRET}\r\nX-Injected: 1"})
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- total deadline --------------------------------------------------------------------


def _drip(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        sock.sendall(b" ")
        time.sleep(0.05)


def _stall_mid_body(sock: socket.socket) -> None:
    time.sleep(0.6)  # slow headers: a per-read timeout alone would now wait until ~1.6s
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n[1, 2, ")
    time.sleep(10)


def _stall_before_headers(sock: socket.socket) -> None:
    time.sleep(10)


@pytest.mark.parametrize("behaviour", [_drip, _stall_mid_body, _stall_before_headers])
def test_total_deadline_holds_against_slow_or_stalled_servers(raw_server, behaviour) -> None:
    upstream = raw_server(behaviour)
    started = time.monotonic()
    with fetcher(timeout_s=1.0, retry=NO_RETRY) as f, pytest.raises(TransientError) as info:
        f.get(upstream.url)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.4, elapsed
    assert "deadline" in str(info.value) or "no response" in str(info.value)


def test_deadline_is_per_attempt_and_attempts_are_bounded(raw_server) -> None:
    upstream = raw_server(_drip)
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=1, max_total_s=10)
    started = time.monotonic()
    with fetcher(timeout_s=0.5, retry=policy) as f, pytest.raises(TransientError):
        f.get(upstream.url)
    assert upstream.connections == 2
    assert time.monotonic() - started < 2.0


# -- size cap --------------------------------------------------------------------------


def test_declared_oversized_response_is_permanent(server) -> None:
    server.route("/big", Response(200, b"[" + b"0," * 5000 + b"0]"))
    with fetcher(max_response_bytes=4096) as f, pytest.raises(PermanentError, match="larger than 4096 bytes"):
        f.get(server.url + "/big")
    assert len(server.requests) == 1


def test_undeclared_oversized_response_is_stopped_while_streaming(raw_server) -> None:
    def endless(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(10_000):
            sock.sendall(b"x" * 1024)

    upstream = raw_server(endless)
    with fetcher(max_response_bytes=64 * 1024) as f, pytest.raises(PermanentError, match="larger than 65536"):
        f.get(upstream.url)


def test_size_cap_applies_after_decompression(server) -> None:
    bomb = gzip.compress(b"0" * 2_000_000)  # ~2 KB on the wire
    server.route("/bomb", Response(200, bomb, headers={"Content-Encoding": "gzip"}))
    with fetcher(max_response_bytes=100_000) as f, pytest.raises(PermanentError, match="larger than 100000"):
        f.get(server.url + "/bomb")


# -- stream (a CSV file of any size) -------------------------------------------------------


def read_all(body) -> bytes:  # type: ignore[no-untyped-def]
    parts = []
    while piece := body.read(10_000):
        parts.append(piece)
    return b"".join(parts)


def test_a_streamed_body_has_no_size_cap(server) -> None:
    payload = b"a,b\n" + b"1,2\n" * 50_000
    server.route("/data.csv", Response(200, payload, headers={"ETag": '"d1"'}, content_type="text/csv"))
    with fetcher(max_response_bytes=1024) as f:
        body = f.stream(server.url + "/data.csv")
        try:
            assert (body.status, body.headers["etag"]) == (200, '"d1"')
            assert read_all(body) == payload
        finally:
            body.close()


def test_a_stream_asks_for_a_range_under_its_validator_and_hears_416(server) -> None:
    server.route("/r.csv", lambda r: Response(416, b"", headers={"Content-Range": "bytes */10"}))
    with fetcher() as f:
        body = f.stream(server.url + "/r.csv", {"X-Key": "k"}, range_from=10, if_range='"d1"')
        body.close()
        with pytest.raises(HTTPStatusError, match="HTTP 416"):
            f.stream(server.url + "/r.csv")  # asked for no range: an error like any 4xx
    sent = server.requests[0].headers
    assert (sent["range"], sent["if-range"], sent["accept-encoding"]) == ("bytes=10-", '"d1"', "identity")
    assert body.status == 416 and sent["x-key"] == "k"


def test_a_stream_retries_failures_before_its_body_and_answers_304(server, timed) -> None:
    handler = timed([Response(503, b""), Response(200, b"a\n1\n")])
    server.route("/flaky.csv", handler)
    server.route("/same.csv", lambda r: Response(304) if r.headers.get("if-none-match") == '"d1"' else Response(200))
    with fetcher() as f:
        body = f.stream(server.url + "/flaky.csv")
        assert read_all(body) == b"a\n1\n"
        body.close()
        unchanged = f.stream(server.url + "/same.csv", etag='"d1"')
        assert unchanged.status == 304 and unchanged.read(100) == b""
        unchanged.close()
    assert len(handler.times) == 2


def test_a_streams_error_names_no_secret(server) -> None:
    server.route("/private.csv", lambda r: Response(403, f"no: {r.headers.get('authorization')}"))
    with fetcher(secrets=[SECRET]) as f, pytest.raises(PermanentError) as info:
        f.stream(server.url + "/private.csv?token=hidden", {"Authorization": f"Bearer {SECRET}"})
    assert SECRET not in str(info.value) and "hidden" not in str(info.value)


def _drip_forever(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(400):
        sock.sendall(b"x")
        time.sleep(0.01)


def _stall(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nid\n1\n")
    time.sleep(10)


def _cut(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\nid\n1\n")


@pytest.mark.parametrize(("behaviour", "message"), [(_drip_forever, "too slow"), (_stall, "stalled"),
                                                    (_cut, "incomplete")])
def test_a_streamed_body_that_drips_stalls_or_stops_short_is_transient(raw_server, behaviour, message) -> None:
    upstream = raw_server(behaviour)
    with fetcher(timeout_s=1.0, retry=NO_RETRY) as f:
        body = f.stream(upstream.url)  # the deadline ends with the headers: a long body may take its time
        try:
            with pytest.raises(TransientError, match=message):
                read_all(body)
        finally:
            body.close()
