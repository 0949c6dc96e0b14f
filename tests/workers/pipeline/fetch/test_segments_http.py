"""A CSV file over HTTP fetched in segments, in-process on the test database, against a
real local HTTP server (tests/support/http_server.py ServedFile: ETag, Range, versions).

As in test_segments.py, each call of fetch_run is one fetch task; a budget of one chunk
stops every task at the first boundary after a chunk. What the segments store together
must be exactly what one uninterrupted fetch stores, whether the server honours Range or
not, and a file replaced between two segments must end as a clean load of the new file.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.http_server import LocalHTTPServer, ServedFile
from tests.support.pipeline import get_run, source
from tests.workers.pipeline.fetch.test_segments import (
    ONE_CHUNK,
    assert_restarted_as_a_clean_load,
    commit_all,
    fetch_in_segments,
    new_run,
    people,
    stored_rows,
)
from workers.pipeline.fetch.segment import SegmentBudget
from workers.sources import csv_source

BATCH = 250


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_source, "ROWS_PER_BATCH", BATCH)


@pytest.fixture
def server() -> Iterator[LocalHTTPServer]:
    # A small send buffer: the server sends little more than the client reads, so the bytes
    # it counts as served are about the bytes the fetch read.
    with LocalHTTPServer(send_buffer=4096) as running:
        yield running


def csv_bytes(rows: list[list[str]], *, encoding: str = "utf-8", bom: bool = False, tail: str = "") -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text)  # CRLF line ends, quoted fields where needed
    writer.writerow(["id", "name", "note"])
    writer.writerows(rows)
    return (("\ufeff" if bom else "") + text.getvalue() + tail).encode(encoding)


def checkpoint_hash(conn: psycopg.Connection, name: str) -> Any:
    row = conn.execute("SELECT file_hash FROM checkpoints WHERE source = %s", (name,)).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", False), ("utf-8", True), ("latin-1", False)])
def test_a_csv_over_http_read_in_many_segments_stores_exactly_what_one_fetch_stores(
    db: psycopg.Connection, server: LocalHTTPServer, tmp_path: Path, encoding: str, bom: bool, ranges: bool
) -> None:
    bad = '9999,"unterminated\r\n'  # a runaway quoted field at the end: rejected with its raw text
    data = csv_bytes(people(3000) + [["x", "wrong field count"]], encoding=encoding, bom=bom, tail=bad)
    served = ServedFile(data, ranges=ranges)
    server.route("/people.csv", served)
    url = server.url + "/people.csv"

    whole = new_run(db, source("whole", "csv", url, chunk_size=100, fields={"title": "name"}))
    assert fetch_in_segments(db, whole, SegmentBudget.unlimited())[0] == 1
    server.requests.clear()
    segmented = new_run(db, source("segmented", "csv", url, chunk_size=100, fields={"title": "name"}))
    segments, sent = fetch_in_segments(db, segmented)

    assert segments == -(-3002 // (3 * BATCH))
    assert stored_rows(db, segmented) == stored_rows(db, whole)
    local = tmp_path / "people.csv"
    local.write_bytes(data)
    from_file = new_run(db, source("local", "csv", str(local), chunk_size=100, fields={"title": "name"}))
    fetch_in_segments(db, from_file, SegmentBudget.unlimited())
    assert stored_rows(db, whole) == stored_rows(db, from_file), "the same rows, lines and raw text as from a file"
    assert sorted(sent) == list(range(len(sent)))  # every chunk handed on once
    assert len(server.requests) == segments
    if ranges:
        assert all(r.headers["range"].startswith("bytes=") for r in server.requests[1:])
    else:
        assert all("range" not in r.headers for r in server.requests)

    run = commit_all(db, segmented)
    assert run["status"] == RunStatus.PARTIAL
    assert (run["fetched"], run["inserted"], run["rejected"]) == (3002, 3000, 2)
    assert run["fetch_segments"] == segments and run["fetch_attempts"] == segments
    assert run["fetch_progress"]["done"] is True
    assert run["fetch_progress"]["bytes_total"] == len(data)
    assert run["fetch_progress"].get("restarts", 0) == 0
    assert run["fetch_position"] is None and run["fetch_lease"] is None
    # A file read in several segments has no whole-file hash: the next run reads it again.
    commit_all(db, whole)
    assert checkpoint_hash(db, "segmented") is None
    assert checkpoint_hash(db, "whole") == hashlib.sha256(data).hexdigest()


def test_with_ranges_each_segment_asks_only_for_the_rest_from_its_position(
    db: psycopg.Connection, server: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows of ~300 bytes, 2,000 to a batch: segments of about two megabytes, so that what a
    # server sends past a segment's end (its socket buffer) is small beside what it read.
    monkeypatch.setattr(csv_source, "ROWS_PER_BATCH", 2000)
    pad = "p" * 280
    data = csv_bytes([[str(i), f"name {i}", pad] for i in range(1, 40_001)])
    served = ServedFile(data)
    server.route("/wide.csv", served)
    run_id = new_run(db, source("wide", "csv", server.url + "/wide.csv", chunk_size=2000))
    committed: list[int] = []

    def note_position(_segment: int) -> None:
        committed.append(get_run(db, run_id)["fetch_position"]["source"]["offset"])

    segments, _ = fetch_in_segments(db, run_id, ONE_CHUNK, between=note_position)

    assert segments >= 5
    asked = [r.headers.get("range") for r in server.requests]
    assert asked == [None] + [f"bytes={offset}-" for offset in committed], "each segment from its own offset"
    assert {r.headers.get("if-range") for r in server.requests[1:]} == {served.etag}
    assert served.served < 1.2 * len(data), f"{served.served} bytes served for a file of {len(data)}"
    run = commit_all(db, run_id)
    assert run["status"] == RunStatus.SUCCEEDED and run["inserted"] == 40_000


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_file_replaced_between_segments_is_read_again_from_the_top(
    db: psycopg.Connection, server: LocalHTTPServer, ranges: bool
) -> None:
    served = ServedFile(csv_bytes(people(2000)), ranges=ranges)
    server.route("/swap.csv", served)
    config = source("swap", "csv", server.url + "/swap.csv", chunk_size=100, fields={"title": "name"})
    # An earlier run left the records the swap is compared with.
    first = new_run(db, config)
    fetch_in_segments(db, first, SegmentBudget.unlimited())
    commit_all(db, first)

    replacement = people(2500, version="v2")  # every name changed, 500 more ids

    def swap(segment: int) -> None:
        if segment == 2:
            served.replace(csv_bytes(replacement))  # a new ETag and Last-Modified

    served.replace(csv_bytes(people(2000, version="v1b")))  # the version the run starts on
    run_id = new_run(db, config)
    fetch_in_segments(db, run_id, ONE_CHUNK, between=swap)
    run = commit_all(db, run_id)

    assert_restarted_as_a_clean_load(db, run, replacement)
    assert run["fetch_state"]["etag"] == served.etag  # the validators of the version loaded
