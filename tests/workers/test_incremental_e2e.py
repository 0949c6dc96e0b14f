"""Incremental runs compare typed values, end to end: a real worker, a local HTTP upstream, CSV files.

The checkpoint must follow the values' meaning (instants, numbers), never their text, and
a value that cannot be compared must be rejected and never become the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.http_server import LocalHTTPServer, Request, Response
from tests.support.pipeline import checkpoint, ingest, records, rejects, source

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def server() -> LocalHTTPServer:
    with LocalHTTPServer() as srv:
        yield srv


def test_timestamps_with_mixed_utc_offsets_compare_as_instants(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    upstream = [
        {"id": 1, "updated_at": "2026-01-01T10:00:00Z"},
        {"id": 2, "updated_at": "2026-01-01T11:00:00+05:00"},  # 06:00 UTC: older, though greater as text
    ]
    sent_since: list[str | None] = []

    def handler(request: Request) -> Response:
        sent_since.append(request.query.get("since"))
        return Response(200, json.dumps(upstream))

    server.route("/tickets", handler)
    config = source("tickets", "http_json", f"{server.url}/tickets", incremental_field="updated_at",
                    since_param="since", types={"updated_at": "datetime"})
    assert ingest(db, config)["inserted"] == 2
    assert checkpoint(db, "tickets") == "2026-01-01T10:00:00Z"

    upstream += [
        {"id": 3, "updated_at": "2026-01-01T09:30:00-03:00"},  # 12:30 UTC: newer, though smaller as text
        {"id": 4, "updated_at": "2026-01-01T10:30:00+05:00"},  # 05:30 UTC: older, though greater as text
    ]
    second = ingest(db, config)
    assert (second["status"], second["fetched"], second["inserted"]) == (RunStatus.SUCCEEDED, 1, 1)
    assert set(records(db, "tickets")) == {"1", "2", "3"}
    assert checkpoint(db, "tickets") == "2026-01-01T12:30:00Z"
    assert sent_since == [None, "2026-01-01T10:00:00Z"]


@pytest.mark.parametrize("types", [{"seq": "int"}, {}], ids=["int", "untyped"])
def test_numbers_compare_as_numbers(db: psycopg.Connection, tmp_path: Path, types: dict[str, str]) -> None:
    big = 2**53  # beyond it, a float no longer tells n from n + 1
    data = tmp_path / "events.csv"
    data.write_text("id,seq\n1,9\n")
    config = source("events", "csv", str(data), incremental_field="seq", types=types)
    assert ingest(db, config)["inserted"] == 1
    assert checkpoint(db, "events") == 9

    data.write_text(f"id,seq\n1,9\n2,10\n3,{big}\n")
    second = ingest(db, config)
    assert (second["fetched"], second["inserted"]) == (2, 2)  # 10 > 9, though "10" < "9" as text
    assert checkpoint(db, "events") == big

    data.write_text(f"id,seq\n1,9\n2,10\n3,{big}\n4,{big + 1}\n")
    third = ingest(db, config)
    assert (third["fetched"], third["inserted"]) == (1, 1)
    assert checkpoint(db, "events") == big + 1


def test_a_poison_value_is_rejected_and_never_becomes_the_checkpoint(
    db: psycopg.Connection, server: LocalHTTPServer
) -> None:
    good = [{"id": i, "seq": i} for i in (1, 2, 3)]
    poison = [{"id": 10, "seq": "inf"}, {"id": 11, "seq": "NaN"}, {"id": 12, "seq": "later"}]
    upstream = good + poison
    server.route("/events", lambda _r: Response(200, json.dumps(upstream)))
    config = source("events", "http_json", f"{server.url}/events", incremental_field="seq")
    first = ingest(db, config)
    assert (first["status"], first["inserted"], first["rejected"]) == (RunStatus.PARTIAL, 3, 3)
    assert {(r["external_id"], r["reason"], r["field"]) for r in rejects(db, first["id"])} == {
        (str(i), "incremental_invalid", "seq") for i in (10, 11, 12)
    }
    assert checkpoint(db, "events") == 3

    upstream.append({"id": 4, "seq": 4})
    second = ingest(db, config)
    assert (second["inserted"], second["rejected"]) == (1, 3)  # the newer record still arrives
    assert "4" in records(db, "events")
    assert checkpoint(db, "events") == 4


def test_checkpoints_stored_in_the_earlier_form_still_load(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    upstream = [
        {"id": 1, "at": "2026-01-01T09:00:00Z"},  # before the checkpoint (10:00 UTC)
        {"id": 2, "at": "2026-01-01T09:30:00-03:00"},  # after it (12:30 UTC)
    ]
    server.route("/feed", lambda _r: Response(200, json.dumps(upstream)))
    timed = source("timed", "http_json", f"{server.url}/feed", incremental_field="at", types={"at": "datetime"})
    # As the release that compared raw text stored it: the upstream's own offset.
    db.execute("INSERT INTO checkpoints (source, value) VALUES ('timed', '\"2026-01-01T07:00:00-03:00\"')")
    run = ingest(db, timed)
    assert (run["fetched"], set(records(db, "timed"))) == (1, {"2"})
    assert checkpoint(db, "timed") == "2026-01-01T12:30:00Z"


def test_a_source_stuck_on_a_poisoned_checkpoint_recovers(db: psycopg.Connection, server: LocalHTTPServer) -> None:
    server.route("/stuck", lambda _r: Response(200, json.dumps([{"id": i, "seq": i} for i in (1, 2, 3)])))
    config = source("stuck", "http_json", f"{server.url}/stuck", incremental_field="seq")
    # The release that compared raw text made a word the checkpoint, and then fetched nothing.
    db.execute("INSERT INTO checkpoints (source, value) VALUES ('stuck', '\"later\"')")
    run = ingest(db, config)
    assert (run["fetched"], run["inserted"]) == (3, 3)
    assert checkpoint(db, "stuck") == 3
