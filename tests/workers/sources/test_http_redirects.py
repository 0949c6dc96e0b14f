"""Redirects against two real servers: a source's headers never leave its own origin.

The source server is on 127.0.0.1 and the "other host" on 127.0.0.2 (loopback too, but
another host to a client); the source's header carries the test token from the
environment, so a leak would show in the other server's recorded requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.core.sources_config import SourceConfig
from tests.support.http_server import LocalHTTPServer, Request, Response
from workers.sources import csv_source, http_json
from workers.sources.base import FetchState, PermanentError, RawItem
from workers.sources.http import HttpFetcher
from workers.sources.redirects import RedirectPolicy

SECRET = os.environ["TEST_SOURCE_TOKEN"]
HEADERS = {"X-Api-Key": "${TEST_SOURCE_TOKEN}", "Authorization": "Bearer ${TEST_SOURCE_TOKEN}"}


@pytest.fixture
def other_host() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer(host="127.0.0.2") as running:
        yield running


def redirect(to: str, status: int = 302) -> Response:
    return Response(status, b"", headers={"Location": to})


def records(source: SourceConfig, fetcher_for: Callable[..., HttpFetcher]) -> list[dict]:
    with fetcher_for(source) as fetcher:
        extraction = http_json.extract(source, FetchState(), fetcher)
        return [item.record for item in extraction.items if isinstance(item, RawItem)]


def leaked(server: LocalHTTPServer) -> list[str]:
    """Every header value the server received that carries the secret."""
    return [value for request in server.requests for value in request.headers.values() if SECRET in value]


def test_cross_host_redirect_is_refused_and_the_other_host_sees_nothing(
    server, other_host, make_source, fetcher_for
) -> None:
    other_host.route("/data", Response(200, b'[{"id": 1}]'))
    server.route("/data", redirect(other_host.url + "/data?sig=signed-url-token"))
    source = make_source(url=server.url + "/data", headers=HEADERS)

    with pytest.raises(PermanentError) as caught:
        records(source, fetcher_for)

    message = str(caught.value)
    assert "redirect to 127.0.0.2 refused" in message and "redirect_hosts" in message
    assert SECRET not in message and "signed-url-token" not in message
    assert other_host.requests == []
    assert len(server.requests) == 1  # permanent: not retried


def test_another_port_on_the_same_host_is_another_origin(server, make_source, fetcher_for) -> None:
    with LocalHTTPServer() as other_port:
        other_port.route("/data", Response(200, b'[{"id": 1}]'))
        server.route("/data", redirect(other_port.url + "/data"))
        source = make_source(url=server.url + "/data", headers=HEADERS)
        with pytest.raises(PermanentError, match="redirect to 127.0.0.1 refused"):
            records(source, fetcher_for)
        assert other_port.requests == []


def test_redirect_hosts_allows_the_host_but_never_sends_it_the_headers(
    server, other_host, make_source, fetcher_for
) -> None:
    other_host.route("/cdn/data.json", Response(200, b'[{"id": 1}, {"id": 2}]', headers={"ETag": '"cdn-v1"'}))
    server.route("/data", redirect(other_host.url + "/cdn/data.json", status=307))
    source = make_source(url=server.url + "/data", headers=HEADERS, redirect_hosts=["127.0.0.2"])

    assert records(source, fetcher_for) == [{"id": 1}, {"id": 2}]

    assert server.requests[0].headers["x-api-key"] == SECRET  # the source's own origin gets them
    (followed,) = other_host.requests
    assert followed.path == "/cdn/data.json"
    assert leaked(other_host) == []
    assert "authorization" not in followed.headers and "x-api-key" not in followed.headers


def test_validators_follow_an_allowed_redirect(server, other_host, make_source, fetcher_for) -> None:
    other_host.route("/cdn", Response(304, b""))
    server.route("/data", redirect(other_host.url + "/cdn"))
    source = make_source(url=server.url + "/data", headers=HEADERS, redirect_hosts=["127.0.0.2"])

    with fetcher_for(source) as fetcher:
        extraction = http_json.extract(source, FetchState(etag='"cdn-v1"'), fetcher)

    assert extraction.not_modified
    assert other_host.requests[0].headers["if-none-match"] == '"cdn-v1"'
    assert leaked(other_host) == []


def test_a_listed_host_cannot_pass_the_request_on_to_an_unlisted_one(
    server, other_host, make_source, fetcher_for
) -> None:
    with LocalHTTPServer(host="127.0.0.3") as third:
        third.route("/x", Response(200, b"[]"))
        other_host.route("/cdn", redirect(third.url + "/x"))
        server.route("/data", redirect(other_host.url + "/cdn"))
        source = make_source(url=server.url + "/data", headers=HEADERS, redirect_hosts=["127.0.0.2"])
        with pytest.raises(PermanentError, match="redirect to 127.0.0.3 refused"):
            records(source, fetcher_for)
        assert third.requests == []


def test_same_origin_redirects_are_followed_with_the_headers(server, make_source, fetcher_for) -> None:
    server.route("/old", redirect("/moved", status=301))
    server.route("/moved", redirect(server.url + "/data?page=1", status=308))
    server.route("/data", Response(200, b'{"items": [{"id": "a"}]}'))
    source = make_source(url=server.url + "/old", headers=HEADERS, records_path="items")

    assert records(source, fetcher_for) == [{"id": "a"}]

    assert [r.path for r in server.requests] == ["/old", "/moved", "/data"]
    assert all(r.headers["x-api-key"] == SECRET for r in server.requests)


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/etc/passwd", "gopher://127.0.0.1:70/"])
def test_redirect_to_a_non_http_scheme_is_refused(location: str, server, make_source, fetcher_for) -> None:
    server.route("/data", redirect(location))
    source = make_source(url=server.url + "/data", headers=HEADERS, redirect_hosts=["127.0.0.1"])
    with pytest.raises(PermanentError, match=r"redirect to a \w+: URL refused") as caught:
        records(source, fetcher_for)
    assert "passwd" not in str(caught.value)


def test_a_redirect_loop_is_bounded(server, make_source, fetcher_for) -> None:
    server.route("/a", redirect("/b"))
    server.route("/b", redirect("/a"))
    source = make_source(url=server.url + "/a")
    with pytest.raises(PermanentError, match="more than 10 redirects"):
        records(source, fetcher_for)
    assert len(server.requests) == 11


def test_csv_downloads_follow_the_same_rule(server, other_host, make_source, fetcher_for) -> None:
    other_host.route("/file.csv", Response(200, b"id\n1\n", content_type="text/csv"))
    server.route("/file.csv", redirect(other_host.url + "/file.csv"))
    source = make_source("csv", url=server.url + "/file.csv", headers=HEADERS)
    with fetcher_for(source) as fetcher, pytest.raises(PermanentError, match="redirect to 127.0.0.2 refused"):
        csv_source.extract(source, FetchState(), fetcher)
    assert other_host.requests == []


# -- the policy on its own: cases a plain-HTTP test server cannot show ----------------------


@pytest.mark.parametrize(
    ("start", "location", "hosts", "outcome"),
    [
        ("http://api.example.com/x", "https://api.example.com/y", (), "with headers"),  # upgrade
        ("http://api.example.com:8080/x", "https://api.example.com/y", (), "refused"),  # not the default port
        ("https://api.example.com/x", "http://api.example.com/y", (), "refused"),  # downgrade
        ("https://api.example.com/x", "http://cdn.example.com/y", ("cdn.example.com",), "refused"),  # downgrade
        ("https://api.example.com/x", "https://CDN.example.com./y", ("cdn.example.com",), "without headers"),
        ("https://api.example.com/x", "https://cdn.example.com.evil.net/y", ("cdn.example.com",), "refused"),
        ("https://api.example.com/x", "//evil.net/y", (), "refused"),  # scheme-relative
        ("https://api.example.com/x", "https://api.example.com:443/y", (), "with headers"),
        ("https://api.example.com/x", "https://user:pw@evil.net/y", (), "refused"),
        ("https://bücher.de/x", "https://xn--bcher-kva.de/y", (), "with headers"),
        ("https://api.example.com/x", "data:text/plain,hi", ("api.example.com",), "refused"),
    ],
)
def test_redirect_policy(start: str, location: str, hosts: tuple[str, ...], outcome: str) -> None:
    policy = RedirectPolicy.for_source(None, hosts)
    url = httpx.URL(start)
    try:
        hop = policy.follow(url, url, location, "where")
    except PermanentError:
        assert outcome == "refused"
    else:
        assert outcome == ("with headers" if hop.with_headers else "without headers")


def test_redirect_hosts_come_from_the_source(make_source) -> None:
    source = make_source(url="https://api.example.com/", redirect_hosts=["CDN.example.com"])
    with HttpFetcher.for_source(source) as fetcher:
        assert fetcher.redirects.allowed_hosts == frozenset({"cdn.example.com"})


def test_a_next_page_link_to_another_host_gets_no_headers(server, other_host, make_source, fetcher_for) -> None:
    other_host.route("/page2", Response(200, b'[{"id": 2}]'))
    server.route("/page1", Response(200, b'[{"id": 1}]', headers={"Link": f'<{other_host.url}/page2>; rel="next"'}))
    source = make_source(url=server.url + "/page1", headers=HEADERS, pagination="link")

    assert records(source, fetcher_for) == [{"id": 1}, {"id": 2}]

    assert server.requests[0].headers["x-api-key"] == SECRET
    assert len(other_host.requests) == 1 and leaked(other_host) == []


def test_headers_are_checked_per_request_not_per_client(server, other_host) -> None:
    """A redirect back from an allowed host to the source's origin carries the headers again."""
    server.route("/start", redirect(other_host.url + "/bounce"))
    other_host.route("/bounce", redirect(server.url + "/end"))
    server.route("/end", Response(200, b"[]"))
    policy = RedirectPolicy.for_source(None, ["127.0.0.2"])

    def seen(request: Request) -> str | None:
        return request.headers.get("x-api-key")

    with HttpFetcher(redirects=policy) as fetcher:
        fetcher.get(server.url + "/start", headers={"X-Api-Key": "k"})
    assert [seen(r) for r in server.requests] == ["k", "k"]
    assert [seen(r) for r in other_host.requests] == [None]
