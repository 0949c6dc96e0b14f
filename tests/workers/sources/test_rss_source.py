"""rss connector: RSS 2.0 and Atom fields, conditional fetch, and hostile XML refused."""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import pytest

from tests.support.http_server import Request, Response
from workers.sources import rss
from workers.sources.base import FetchState, PermanentError


def run(source, state: FetchState | None = None, fetcher=None):  # type: ignore[no-untyped-def]
    extraction = rss.extract(source, state or FetchState())
    return extraction, list(extraction.items)


def feed(make_source, path):  # type: ignore[no-untyped-def]
    return make_source("rss", url=str(path), id_field=None)


def test_rss2_items_keep_every_child_and_gain_normalised_keys(make_source, cases) -> None:
    extraction, items = run(feed(make_source, cases / "feed_rss2.xml"))
    assert [item.line for item in items] == [1, 2, 3]
    first, second, third = (item.record for item in items)
    assert first is not None and second is not None and third is not None
    assert first["id"] == "urn:story:1"
    assert first["title"] == "First story"
    assert first["link"] == "https://news.example.com/1"
    assert first["description"] == "Summary of the <b>first</b> story"
    assert first["author"] == "editor@example.com (Ed Itor)"
    assert first["published"] == "Tue, 24 Nov 2026 09:30:00 GMT"
    # raw children survive, namespace-free; repeats become lists; empty elements keep attributes
    assert first["guid"] == "urn:story:1" and first["pubDate"] == "Tue, 24 Nov 2026 09:30:00 GMT"
    assert first["category"] == ["world", "politics"]
    assert first["enclosure"] == {"url": "https://news.example.com/1.mp3", "length": "1234", "type": "audio/mpeg"}

    assert second["id"] == "https://news.example.com/2"  # no guid: the link is the id
    assert second["author"] == "Ada Writer" and second["creator"] == "Ada Writer"  # dc:creator
    assert second["published"] == "2026-11-25T08:00:00Z"  # dc:date
    assert second["description"] == "<p>Full <em>text</em> of the second story</p>"  # content:encoded

    assert third["id"] is None and third["link"] is None  # still yielded: the normaliser rejects it
    assert third["title"] == "Third: neither guid nor link"
    assert extraction.new_state == {"file_hash": hashlib.sha256((cases / "feed_rss2.xml").read_bytes()).hexdigest()}


def test_atom_entries(make_source, cases) -> None:
    _, items = run(feed(make_source, cases / "feed_atom.xml"))
    one, two = (item.record for item in items)
    assert one is not None and two is not None
    assert one["id"] == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"
    assert one["title"] == "Atom entry one"
    assert one["link"] == "https://atom.example.com/1"  # rel=alternate, not rel=self
    assert one["description"] == "Some text."
    assert one["author"] == "Jane Doe"
    assert one["published"] == "2026-11-24T10:00:00Z"  # Atom's own <published>, kept intact
    assert one["summary"] == "Some text." and one["updated"] == "2026-11-25T18:30:02Z"

    assert two["title"] == "Entry <i>two</i>"
    assert two["link"] == "https://atom.example.com/2"  # rel omitted means alternate
    assert two["author"] == "Feed Author"  # inherited from the feed
    assert two["published"] == "2026-11-23T07:00:00Z"
    assert two["description"] == "<div><p>Inline <b>XHTML</b></p></div>"


def test_atom_entry_without_published_uses_updated(make_source, tmp_path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(
        '<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>e1</id><title>t</title>'
        "<updated>2026-01-02T03:04:05Z</updated></entry></feed>"
    )
    _, items = run(feed(make_source, path))
    assert items[0].record is not None and items[0].record["published"] == "2026-01-02T03:04:05Z"
    assert items[0].record["link"] is None and items[0].record["id"] == "e1"


def test_rss_1_0_rdf(make_source, tmp_path) -> None:
    path = tmp_path / "rdf.xml"
    path.write_text(
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">'
        '<channel rdf:about="https://x.example/"><title>x</title></channel>'
        '<item rdf:about="https://x.example/a"><title>A</title><link>https://x.example/a</link></item>'
        "</rdf:RDF>"
    )
    _, items = run(feed(make_source, path))
    assert [(i.record["id"], i.record["title"]) for i in items if i.record] == [("https://x.example/a", "A")]


def test_feed_over_http_conditional(server, make_source, fetcher_for, cases) -> None:
    body = (cases / "feed_atom.xml").read_bytes()

    def handler(request: Request) -> Response:
        if request.headers.get("if-none-match") == '"f1"':
            return Response(304)
        return Response(200, body, headers={"ETag": '"f1"'}, content_type="application/atom+xml")

    server.route("/feed", handler)
    source = make_source("rss", url=server.url + "/feed", id_field=None)
    fresh = rss.extract(source, FetchState(), fetcher_for(source))
    assert len(list(fresh.items)) == 2 and fresh.new_state == {"etag": '"f1"', "last_modified": None}
    again = rss.extract(source, FetchState(etag='"f1"'), fetcher_for(source))
    assert again.not_modified and list(again.items) == []


def test_same_file_hash_is_not_modified(make_source, cases) -> None:
    path = cases / "feed_rss2.xml"
    extraction, items = run(
        feed(make_source, path), FetchState(file_hash=hashlib.sha256(path.read_bytes()).hexdigest())
    )
    assert extraction.not_modified and items == []


def test_billion_laughs_is_refused_fast_and_small(make_source, cases) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(PermanentError, match="entity"):
            run(feed(make_source, cases / "billion_laughs.xml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1.0
    assert peak < 5 * 1024 * 1024


def test_external_entity_is_refused(make_source, cases) -> None:
    with pytest.raises(PermanentError) as info:
        run(feed(make_source, cases / "external_entity.xml"))
    assert "root:" not in str(info.value)


def test_external_parameter_entity_is_never_fetched(server, make_source, tmp_path) -> None:
    server.route("/evil.dtd", Response(200, '<!ENTITY leak "pwned">', content_type="application/xml-dtd"))
    path = tmp_path / "param.xml"
    path.write_text(
        f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % ext SYSTEM "{server.url}/evil.dtd"> %ext;]>'
        "<rss><channel><item><title>&leak;</title></item></channel></rss>"
    )
    with pytest.raises(PermanentError):
        run(feed(make_source, path))
    assert server.requests == []


def test_external_dtd_is_not_fetched(server, make_source, tmp_path) -> None:
    server.route("/x.dtd", Response(200, '<!ENTITY leak "pwned">', content_type="application/xml-dtd"))
    path = tmp_path / "dtd.xml"
    path.write_text(
        f'<?xml version="1.0"?><!DOCTYPE rss SYSTEM "{server.url}/x.dtd">'
        "<rss><channel><item><title>ok</title><link>https://x/1</link></item></channel></rss>"
    )
    try:
        _, items = run(feed(make_source, path))
        assert [i.record["title"] for i in items if i.record] == ["ok"]
    except PermanentError:
        pass  # refusing is fine too; fetching is not
    assert server.requests == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<rss><channel><item><title>unclosed</channel></rss>", "malformed XML"),
        (b"", "malformed XML"),
        (b"<html><body>not a feed</body></html>", "not an RSS or Atom feed"),
        (b"<rss version='2.0'></rss>", "without a <channel>"),
    ],
)
def test_unusable_documents_are_permanent(make_source, tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "f.xml"
    path.write_bytes(content)
    with pytest.raises(PermanentError, match=message):
        run(feed(make_source, path))


def test_oversized_feed_is_permanent(server, make_source, fetcher_for) -> None:
    body = "<rss><channel>" + "<item><title>x</title></item>" * 1000 + "</channel></rss>"
    server.route("/big", Response(200, body, content_type="application/rss+xml"))
    source = make_source("rss", url=server.url + "/big", id_field=None, max_response_bytes=2048)
    with pytest.raises(PermanentError, match="larger than 2048 bytes"):
        rss.extract(source, FetchState(), fetcher_for(source))
