"""End to end through a real Celery worker, real Redis, real PostgreSQL, real HTTP.

Each test starts runs the way the API does (a run row, then a fetch message) and
checks the final table against the known upstream record set.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.runs import ActiveRunExists, create_run
from tests.support.http_server import LocalHTTPServer, Request, Response
from tests.support.pipeline import checkpoint, ingest, records, rejects, source, start_run, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")


def posts(n: int, start: int = 1, title: str = "post") -> list[dict]:
    return [
        {"id": i, "userId": i % 7, "title": f"{title} {i}", "body": f"body of {i}"} for i in range(start, start + n)
    ]


@pytest.fixture
def server() -> LocalHTTPServer:
    with LocalHTTPServer() as srv:
        yield srv


def test_json_api_twice_gives_no_duplicates_and_all_unchanged(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    upstream = posts(250)
    server.route("/posts", lambda _r: Response(200, json.dumps(upstream)))
    config = source("posts", "http_json", f"{server.url}/posts", chunk_size=40,
                    fields={"title": "title", "content": "body", "author": "userId"})

    first = ingest(db, config)
    assert (first["status"], first["fetched"], first["inserted"]) == (RunStatus.SUCCEEDED, 250, 250)
    stored = records(db, "posts")
    assert len(stored) == 250
    assert stored["17"]["title"] == "post 17" and stored["17"]["content"] == "body of 17"
    assert stored["17"]["author"] == "3"

    second = ingest(db, config)
    assert (second["fetched"], second["unchanged"], second["inserted"], second["updated"]) == (250, 250, 0, 0)
    assert db.execute("SELECT count(*) FROM records WHERE source = 'posts'").fetchone()[0] == 250

    for item in upstream[10:13]:
        item["title"] += " (edited)"
    third = ingest(db, config)
    assert (third["updated"], third["unchanged"], third["inserted"]) == (3, 247, 0)
    assert records(db, "posts")["12"]["title"] == "post 12 (edited)"
    assert db.execute("SELECT records FROM source_stats WHERE source = 'posts'").fetchone()[0] == 250


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "link"])
def test_every_pagination_style_walks_every_page(db: psycopg.Connection, server: LocalHTTPServer, style: str) -> None:
    upstream = posts(95)
    size = 10

    def handler(request: Request) -> Response:
        if style == "page":
            start = (int(request.query.get("page", 1)) - 1) * int(request.query["per_page"])
            return Response(200, json.dumps({"data": upstream[start:start + size]}))
        if style == "offset":
            start = int(request.query.get("offset", 0))
            return Response(200, json.dumps({"data": upstream[start:start + int(request.query["limit"])]}))
        start = int(request.query.get("cursor", 0))
        page = upstream[start:start + size]
        nxt = start + size if start + size < len(upstream) else None
        if style == "cursor":
            return Response(200, json.dumps({"data": page, "meta": {"next": None if nxt is None else str(nxt)}}))
        headers = {"Link": f'<{server.url}/items?cursor={nxt}>; rel="next"'} if nxt is not None else {}
        return Response(200, json.dumps({"data": page}), headers=headers)

    server.route("/items", handler)
    config = source(f"paged-{style}", "http_json", f"{server.url}/items", records_path="data",
                    pagination=style, page_size=size, chunk_size=25)
    run = ingest(db, config)
    assert (run["status"], run["inserted"]) == (RunStatus.SUCCEEDED, 95)
    assert set(records(db, config.name)) == {str(i) for i in range(1, 96)}
    assert run["chunks_total"] == 4


def test_429_is_retried_after_retry_after(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    calls: list[int] = []

    def handler(_request: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return Response(429, b'{"error": "slow down"}', headers={"Retry-After": "1"})
        return Response(200, json.dumps(posts(5)))

    server.route("/limited", handler)
    run = ingest(db, source("limited", "http_json", f"{server.url}/limited"))
    assert (run["status"], run["inserted"], len(calls)) == (RunStatus.SUCCEEDED, 5, 2)


def test_persistent_500_fails_the_run_and_keeps_the_checkpoint(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    healthy = [True]
    server.route("/flaky", lambda _r: Response(200, json.dumps(posts(20))) if healthy[0] else Response(500, b"boom"))
    config = source("flaky", "http_json", f"{server.url}/flaky", incremental_field="id")
    assert ingest(db, config)["status"] == RunStatus.SUCCEEDED
    assert checkpoint(db, "flaky") == 20

    healthy[0] = False
    failed = ingest(db, config, timeout_s=120)
    assert failed["status"] == RunStatus.FAILED
    assert "500" in failed["error"]
    assert failed["fetched"] == 0
    assert checkpoint(db, "flaky") == 20


def test_304_on_rerun_processes_nothing(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.headers.get("if-none-match") == '"v1"':
            return Response(304, b"", headers={"ETag": '"v1"'})
        return Response(200, json.dumps(posts(30)), headers={"ETag": '"v1"'})

    server.route("/etag", handler)
    config = source("etagged", "http_json", f"{server.url}/etag")
    assert ingest(db, config)["inserted"] == 30
    rerun = ingest(db, config)
    assert (rerun["status"], rerun["fetched"], rerun["chunks_total"]) == (RunStatus.SUCCEEDED, 0, 0)
    assert server.requests[-1].headers.get("if-none-match") == '"v1"'


def test_incremental_fetches_only_records_past_the_checkpoint(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    upstream = posts(50)
    seen_since: list[str | None] = []

    def handler(request: Request) -> Response:
        seen_since.append(request.query.get("since"))
        return Response(200, json.dumps(upstream))

    server.route("/inc", handler)
    config = source("inc", "http_json", f"{server.url}/inc", incremental_field="id", since_param="since")
    assert ingest(db, config)["fetched"] == 50
    assert checkpoint(db, "inc") == 50
    upstream.extend(posts(5, start=51))
    second = ingest(db, config)
    assert (second["fetched"], second["inserted"], second["unchanged"]) == (5, 5, 0)
    assert checkpoint(db, "inc") == 55
    assert seen_since == [None, "50"]


def test_csv_bom_quoted_newlines_latin1_and_broken_rows(db: psycopg.Connection, tmp_path: Path) -> None:
    good = tmp_path / "bom.csv"
    good.write_bytes(
        "\ufeffid,name,note,age\n1,Ann,\"line one\nline two\",30\n2,Bob,\"a, b\",\n3,Cy,x,forty\n4,Di\n5,Ed,ok,50\n"
        .encode("utf-8")
    )
    config = source("csv-mixed", "csv", str(good), types={"age": "int"}, fields={"title": "name", "content": "note"})
    run = ingest(db, config)
    assert run["status"] == RunStatus.PARTIAL
    assert (run["fetched"], run["inserted"], run["rejected"]) == (5, 3, 2)
    stored = records(db, "csv-mixed")
    assert stored["1"]["content"] == "line one\nline two"
    assert stored["2"]["data"]["age"] is None and stored["2"]["content"] == "a, b"
    found = [(r["line_no"], r["reason"], r["field"]) for r in rejects(db, run["id"])]
    assert found == [(5, "coercion_failed", "age"), (6, "parse_error", None)]

    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,name\n1,Zoë\n2,Ångström\n".encode("latin-1"))
    run = ingest(db, source("csv-latin", "csv", str(latin), fields={"title": "name"}))
    assert run["inserted"] == 2
    assert records(db, "csv-latin")["2"]["title"] == "Ångström"

    unchanged = ingest(db, source("csv-latin", "csv", str(latin), fields={"title": "name"}))
    assert (unchanged["status"], unchanged["fetched"]) == (RunStatus.SUCCEEDED, 0)


def test_rss_and_atom_feeds(db: psycopg.Connection, tmp_path: Path) -> None:
    rss = tmp_path / "feed.xml"
    rss.write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        "<item><title>One</title><link>https://e.org/1</link><guid>g1</guid><description>first</description>"
        "<pubDate>Tue, 10 Jun 2003 04:00:00 GMT</pubDate></item>"
        "<item><title>Two</title><link>https://e.org/2</link><description>second</description></item>"
        "</channel></rss>"
    )
    run = ingest(db, source("rss", "rss", str(rss)))
    assert run["inserted"] == 2
    stored = records(db, "rss")
    assert stored["g1"]["url"] == "https://e.org/1" and stored["g1"]["content"] == "first"
    assert stored["g1"]["published_at"].year == 2003
    assert stored["https://e.org/2"]["title"] == "Two"

    atom = tmp_path / "atom.xml"
    atom.write_text(
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>a</title>'
        '<entry><id>urn:uuid:1</id><title>Atom one</title><link href="https://e.org/a1"/>'
        "<updated>2024-05-01T10:00:00Z</updated><summary>sum</summary><author><name>Ann</name></author></entry>"
        "</feed>"
    )
    run = ingest(db, source("atom", "rss", str(atom)))
    entry = records(db, "atom")["urn:uuid:1"]
    found = (entry["title"], entry["url"], entry["content"], entry["author"])
    assert found == ("Atom one", "https://e.org/a1", "sum", "Ann")


def test_entity_expansion_feed_is_refused(db: psycopg.Connection, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    lol = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    bomb.write_text(f'<?xml version="1.0"?><!DOCTYPE rss [{lol}]><rss><channel><item><title>&lol9;</title>'
                    "</item></channel></rss>")
    run = ingest(db, source("bomb", "rss", str(bomb)))
    assert run["status"] == RunStatus.FAILED
    assert "entit" in run["error"].lower()
    assert records(db, "bomb") == {}


def test_one_active_run_per_source_is_enforced_by_the_database(db: psycopg.Connection, tmp_path: Path) -> None:
    config = source("solo", "csv", str(tmp_path / "missing.csv"))
    results: list[object] = []

    def attempt() -> None:
        with psycopg.connect(db.info.dsn) as conn:
            try:
                results.append(create_run(conn, config, "schedule")["id"])
            except ActiveRunExists as exc:
                results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, ActiveRunExists)]
    assert len(created) == 1 and len(refused) == 5
    assert all(r.run["id"] == created[0] for r in refused)


def test_missing_local_file_fails_clearly(db: psycopg.Connection, tmp_path: Path) -> None:
    run = wait_for_run(db, start_run(db, source("nofile", "csv", str(tmp_path / "nope.csv"))))
    assert run["status"] == RunStatus.FAILED
    assert "nope.csv" in run["error"]
