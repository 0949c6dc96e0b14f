"""Schema drift: events per run, and the record / reject / pause policies."""

from __future__ import annotations

import json

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.runs import SourcePaused, create_run
from tests.support.http_server import LocalHTTPServer, Response
from tests.support.pipeline import ingest, records, rejects, source
from workers.pipeline.normalize.drift import compare, merge_observed

pytestmark = pytest.mark.usefixtures("worker")


def drift(db: psycopg.Connection, name: str) -> list[tuple]:
    return db.execute(
        "SELECT kind, field, old_type, new_type FROM drift_events WHERE source = %s ORDER BY id", (name,)
    ).fetchall()


def test_compare_and_merge() -> None:
    assert merge_observed([{"a": "number"}, {"a": "str", "b": "bool"}, None]) == {"a": "number|str", "b": "bool"}
    events = compare({"a": "number", "b": "str"}, {"a": "str", "c": "bool"})
    assert [(e.kind, e.field) for e in events] == [("added", "c"), ("removed", "b"), ("type_changed", "a")]


@pytest.fixture
def upstream() -> tuple[LocalHTTPServer, list[dict]]:
    rows = [{"id": i, "name": f"n{i}", "score": i * 1.5} for i in range(1, 21)]
    with LocalHTTPServer() as server:
        server.route("/things", lambda _r: Response(200, json.dumps(rows)))
        yield server, rows


def test_record_policy_logs_added_removed_and_type_changed(db: psycopg.Connection, upstream) -> None:
    server, rows = upstream
    config = source("things", "http_json", f"{server.url}/things")
    ingest(db, config)
    assert drift(db, "things") == []  # the first run sets the baseline

    for row in rows:
        row["color"] = "red"
        row["score"] = str(row["score"])
    second = ingest(db, config)
    assert second["status"] == RunStatus.SUCCEEDED and second["updated"] == 20
    assert drift(db, "things") == [("added", "color", None, "str"), ("type_changed", "score", "number", "str")]

    for row in rows:
        del row["color"]
    ingest(db, config)
    assert drift(db, "things")[-1] == ("removed", "color", "str", None)
    assert db.execute("SELECT run_id FROM drift_events WHERE field = 'color' AND kind = 'removed'").fetchone()[0]


def test_reject_policy_rejects_records_that_no_longer_fit(db: psycopg.Connection, upstream) -> None:
    server, rows = upstream
    config = source("strict", "http_json", f"{server.url}/things", on_drift="reject")
    ingest(db, config)
    rows[0]["extra"] = True
    rows[1]["score"] = "not a number"
    run = ingest(db, config)
    assert (run["status"], run["rejected"], run["unchanged"]) == (RunStatus.PARTIAL, 2, 18)
    found = sorted((r["reason"], r["field"], r["external_id"]) for r in rejects(db, run["id"]))
    assert found == [("schema_drift", "extra", "1"), ("schema_drift", "score", "2")]
    assert records(db, "strict")["2"]["data"]["score"] == 3.0  # the stored record kept its good version
    assert {e[0] for e in drift(db, "strict")} == {"added", "type_changed"}


def test_pause_policy_disables_the_source_until_resumed(db: psycopg.Connection, upstream) -> None:
    server, rows = upstream
    config = source("careful", "http_json", f"{server.url}/things", on_drift="pause")
    ingest(db, config)
    rows[0]["surprise"] = 1
    run = ingest(db, config)
    assert run["status"] == RunStatus.SUCCEEDED
    assert "paused" in run["error"] and "added surprise" in run["error"]
    with pytest.raises(SourcePaused):
        create_run(db, config, "schedule")
    db.execute("UPDATE sources SET paused_reason = NULL WHERE name = 'careful'")  # what `app.cli resume` does
    assert ingest(db, config)["status"] == RunStatus.SUCCEEDED
