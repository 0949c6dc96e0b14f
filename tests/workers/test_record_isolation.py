"""One record's faults fail that record only: pulled sources, end to end through a real worker.

A record whose text makes a tsvector larger than PostgreSQL allows, records nested
300 deep, holding integers beyond 64 bits, 1e400 or NaN, a lone surrogate: each used to
fail its chunk (and so its run, on every run), or the whole fetch.
"""

from __future__ import annotations

import json
import random
import string

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.hostile import check_hostile_outcome, hostile_records_json, huge_text
from tests.support.http_server import LocalHTTPServer, Response
from tests.support.pipeline import ingest, records, rejects, source

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def server() -> LocalHTTPServer:
    with LocalHTTPServer() as srv:
        yield srv


def test_an_oversized_record_is_stored_searchable_by_its_prefix_and_its_chunk_lands(
    db: psycopg.Connection, server: LocalHTTPServer
) -> None:
    text = huge_text()
    upstream = [{"id": i, "title": f"post {i}", "body": f"body {i}"} for i in range(1, 13)]
    upstream[6]["body"] = text
    server.route("/posts", lambda _r: Response(200, json.dumps(upstream)))
    config = source("big", "http_json", f"{server.url}/posts", chunk_size=5, fields={"content": "body"})
    for _ in range(2):  # and again: a later run is not failed by it either
        run = ingest(db, config, timeout_s=180)
        assert run["status"] == RunStatus.SUCCEEDED, run["error"]
        assert set(records(db, "big")) == {str(i) for i in range(1, 13)}
    assert records(db, "big")["7"]["content"] == text  # stored whole
    first_word, last_word = text[:10], text[-10:]
    found = [
        db.execute(
            "SELECT count(*) FROM records WHERE source = 'big' AND search @@ to_tsquery('english', %s)", (word,)
        ).fetchone()[0]
        for word in (first_word, "post", last_word)
    ]
    assert found == [1, 12, 0]  # searched by the prefix that fits in a tsvector


def test_hostile_json_records_are_stored_exactly_or_rejected_and_the_rest_lands(
    db: psycopg.Connection, server: LocalHTTPServer
) -> None:
    body = hostile_records_json()
    server.route("/hostile", lambda _r: Response(200, body))
    config = source("hostile", "http_json", f"{server.url}/hostile", chunk_size=4)
    run = ingest(db, config, timeout_s=120)
    assert (run["status"], run["fetched"], run["inserted"], run["rejected"]) == (RunStatus.PARTIAL, 9, 6, 3), run
    check_hostile_outcome(db, "hostile", run["id"])
    again = ingest(db, config, timeout_s=120)  # every later run reads them the same way
    assert (again["status"], again["unchanged"], again["rejected"]) == (RunStatus.PARTIAL, 6, 3), again


def test_a_record_the_database_refuses_is_rejected_with_its_message_and_the_rest_lands(
    db: psycopg.Connection, server: LocalHTTPServer
) -> None:
    upstream = [{"id": i, "title": f"post {i}"} for i in range(1, 11)]
    body = json.dumps(upstream).replace('"post 4"', '"post \\ud800 4"')  # a lone surrogate: valid JSON
    server.route("/surrogate", lambda _r: Response(200, body))
    run = ingest(db, source("surrogate", "http_json", f"{server.url}/surrogate", chunk_size=10))
    assert (run["status"], run["inserted"], run["rejected"]) == (RunStatus.PARTIAL, 9, 1), run
    assert set(records(db, "surrogate")) == {str(i) for i in range(1, 11)} - {"4"}
    [reject] = rejects(db, run["id"])
    assert (reject["reason"], reject["external_id"], reject["line_no"]) == ("unstorable", "4", 4)
    assert "surrogate" in reject["message"] and reject["raw"]["title"] == "post \ufffd 4"


def test_an_id_longer_than_its_index_allows_is_rejected(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    rnd = random.Random(7)  # incompressible: the index compresses nothing away
    longest, long_id = ("".join(rnd.choices(string.ascii_letters, k=n)) for n in (2048, 3000))
    upstream = [{"id": "short", "title": "fine"}, {"id": long_id, "title": "too long an id"},
                {"id": longest, "title": "the longest id stored"}]
    server.route("/ids", lambda _r: Response(200, json.dumps(upstream)))
    run = ingest(db, source("ids", "http_json", f"{server.url}/ids"))
    assert (run["status"], run["inserted"], run["rejected"]) == (RunStatus.PARTIAL, 2, 1), run
    assert set(records(db, "ids")) == {"short", longest}
    [reject] = rejects(db, run["id"])
    assert (reject["reason"], reject["field"], reject["external_id"]) == ("id_too_long", "external_id", long_id)
