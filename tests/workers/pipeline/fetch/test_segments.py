"""A fetch in segments (workers/pipeline/fetch/segment.py), in-process on the test database.

Each call of fetch_run is one fetch task. A budget of one chunk makes every task stop at
the first boundary after a chunk, so a small file takes many segments; what they store
together must be exactly what one uninterrupted fetch stores.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.runs import create_run
from app.core.sources_config import SourceConfig
from tests.support.pipeline import get_run, records, source
from workers.pipeline.fetch.repeats import SET_LIMIT, KeptIds
from workers.pipeline.fetch.segment import RunStopped, SegmentBudget, claim, dump_kept, load_kept_bytes
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.normalize.stage import process_chunk
from workers.pipeline.raw import load_chunk
from workers.sources import csv_source

ONE_CHUNK = SegmentBudget(seconds=3600, chunks=1)
BATCH = 250  # rows between two boundaries of a CSV file, in these tests


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_source, "ROWS_PER_BATCH", BATCH)


def write_csv(path: Path, rows: list[list[str]], *, encoding: str = "utf-8", bom: bool = False,
              tail: str = "") -> None:
    with path.open("w", newline="", encoding=encoding) as handle:
        if bom:
            handle.write("\ufeff")
        writer = csv.writer(handle)  # CRLF line ends, quoted fields where needed
        writer.writerow(["id", "name", "note"])
        writer.writerows(rows)
        handle.write(tail)


def people(n: int, *, version: str = "v1") -> list[list[str]]:
    # Every 7th note spans two physical lines, so rows and lines differ.
    return [[str(i), f"name {i} {version}", "two\nlines é" if i % 7 == 0 else f"note {i}"] for i in range(1, n + 1)]


def new_run(conn: psycopg.Connection, config: SourceConfig) -> int:
    return int(create_run(conn, config, "api")["id"])


def fetch_in_segments(conn: psycopg.Connection, run_id: int, budget: SegmentBudget = ONE_CHUNK,
                      between: Any = None) -> tuple[int, list[int]]:
    """Call fetch_run as the chain of continuation tasks would; (segments, chunks handed on)."""
    sent: list[int] = []
    segments = 0
    while True:
        continued: list[int] = []
        outcome = fetch_run(conn, run_id, enqueue_chunk=lambda _run, no: sent.append(no), max_attempts=5,
                            budget=budget, enqueue_continuation=continued.append)
        assert outcome is not None
        segments += 1
        if not outcome.continued:
            return segments, sent
        assert continued == [run_id]
        if between is not None:
            between(segments)


def stored_rows(conn: psycopg.Connection, run_id: int) -> list[tuple[Any, ...]]:
    """Every stored item of the run, in chunk order: (line, values or record, error, raw text)."""
    chunks = conn.execute("SELECT chunk_no FROM raw_chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,)).fetchall()
    assert [no for (no,) in chunks] == list(range(len(chunks))), "chunk numbers are contiguous from 0"
    rows = []
    for (no,) in chunks:
        chunk = load_chunk(conn, run_id=run_id, chunk_no=no)
        assert chunk is not None
        rows += [(i.line, i.values or i.record, i.error, i.raw_text) for i in chunk.items]
    return rows


def commit_all(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    for (no,) in conn.execute("SELECT chunk_no FROM raw_chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,)):
        process_chunk(conn, run_id, no)
    return get_run(conn, run_id)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", False), ("utf-8", True), ("latin-1", False)])
def test_a_csv_read_in_many_segments_stores_exactly_what_one_fetch_stores(
    db: psycopg.Connection, tmp_path: Path, encoding: str, bom: bool
) -> None:
    path = tmp_path / "people.csv"
    bad = '9999,"unterminated\r\n'  # a runaway quoted field at the end: rejected with its raw text
    write_csv(path, people(3000) + [["x", "wrong field count"]], encoding=encoding, bom=bom, tail=bad)

    whole = new_run(db, source("whole", "csv", str(path), chunk_size=100, fields={"title": "name"}))
    assert fetch_in_segments(db, whole, SegmentBudget.unlimited())[0] == 1
    segmented = new_run(db, source("segmented", "csv", str(path), chunk_size=100, fields={"title": "name"}))
    segments, sent = fetch_in_segments(db, segmented)

    # A boundary after every full batch; the budget is spent once a chunk is stored, which the
    # unchanged-row filter's batches in flight put two batches later.
    assert segments == -(-3002 // (3 * BATCH))
    assert stored_rows(db, segmented) == stored_rows(db, whole)
    assert sorted(sent) == list(range(len(sent)))  # every chunk handed on once
    run = commit_all(db, segmented)
    assert run["status"] == RunStatus.PARTIAL
    assert (run["fetched"], run["inserted"], run["rejected"]) == (3002, 3000, 2)
    assert run["fetch_segments"] == segments and run["fetch_attempts"] == segments
    assert run["fetch_progress"]["done"] is True
    assert run["fetch_progress"]["bytes_total"] == os.path.getsize(path)
    assert (run["fetch_progress"]["bytes_read"], run["fetch_progress"]["items"]) == (os.path.getsize(path), 3002)
    assert run["fetch_position"] is None and run["fetch_lease"] is None
    assert db.execute("SELECT count(*) FROM fetch_kept_ids").fetchone() == (0,)


@pytest.mark.usefixtures("small_batches")
def test_a_file_replaced_between_segments_is_read_again_from_the_top(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(2000))
    config = source("swap", "csv", str(path), chunk_size=100, fields={"title": "name"})
    # An earlier run left the records the swap is compared with.
    first = new_run(db, config)
    fetch_in_segments(db, first, SegmentBudget.unlimited())
    commit_all(db, first)

    # The new version changes every name and drops nothing, adds 500 ids.
    replacement = people(2500, version="v2")

    def swap(segment: int) -> None:
        if segment == 2:
            write_csv(path, replacement)

    write_csv(path, people(2000, version="v1b"))  # the version the run starts on
    run_id = new_run(db, config)
    fetch_in_segments(db, run_id, ONE_CHUNK, between=swap)
    run = commit_all(db, run_id)

    assert_restarted_as_a_clean_load(db, run, replacement)


def assert_restarted_as_a_clean_load(db: psycopg.Connection, run: dict[str, Any], replacement: list[list[str]]) -> None:
    """The run of source "swap" read two segments of the old version, then the new one whole."""
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert run["fetch_progress"]["restarts"] == 1
    assert {k: r["title"] for k, r in records(db, "swap").items()} == {
        row[0]: row[1] for row in replacement
    }, "the result is a clean load of the new file"
    lines = [line for line, *_ in stored_rows(db, run["id"])]
    restart = lines.index(2, 1)  # the header is line 1: where the new version's first row comes
    assert restart == 2 * 3 * BATCH, "two segments of the old version, then the new one from the top"
    assert len(lines) - restart == len(replacement)


def test_a_second_task_waits_while_the_lease_is_held_and_takes_over_when_it_goes_silent(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(10))
    run_id = new_run(db, source("lease", "csv", str(path)))
    held = claim(db, run_id, timeout_s=300)
    assert held is not None
    assert claim(db, run_id, timeout_s=300) is None, "a live fetch's lease is not taken"
    retried = claim(db, run_id, timeout_s=300, token=held[0].token)
    assert retried is not None, "a task retried after a database error takes its own lease back"
    held = retried
    db.execute("UPDATE runs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (run_id,))
    db.commit()
    taken = claim(db, run_id, timeout_s=300)
    assert taken is not None and taken[0].token != held[0].token
    with pytest.raises(RunStopped), db.transaction():
        held[0].hold(db)  # the silent task wakes up: it may write nothing more
    taken[0].hold(db)
    db.commit()


def test_a_segment_that_dies_is_read_again_from_the_last_committed_position(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(30_000))
    config = source("crash", "csv", str(path), chunk_size=1000, fields={"title": "name"})
    run_id = new_run(db, config)
    budget = SegmentBudget(seconds=3600, chunks=10)
    fetch_run(db, run_id, enqueue_chunk=lambda *_: None, max_attempts=5, budget=budget,
              enqueue_continuation=lambda _: None)  # segment 1 commits its chunks and its position
    committed = get_run(db, run_id)["fetch_position"]
    assert 0 < committed["chunk_no"] < 27

    stored: list[int] = []

    def die_after_three(_run: int, chunk_no: int) -> None:
        stored.append(chunk_no)
        if len(stored) == 3:
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing catches it

    with pytest.raises(KeyboardInterrupt):
        fetch_run(db, run_id, enqueue_chunk=die_after_three, max_attempts=5, budget=budget,
                  enqueue_continuation=lambda _: None)
    db.rollback()
    assert get_run(db, run_id)["fetch_position"] == committed, "nothing committed past the last position"
    db.execute("UPDATE runs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (run_id,))
    db.commit()

    fetch_in_segments(db, run_id, budget)  # the re-driven chain
    again = [no for (no,) in db.execute("SELECT chunk_no FROM raw_chunks WHERE run_id = %s", (run_id,))]
    assert sorted(again) == list(range(30))
    run = commit_all(db, run_id)
    assert run["status"] == RunStatus.SUCCEEDED
    assert (run["fetched"], run["inserted"]) == (30_000, 30_000)
    assert run["fetch_attempts"] == run["fetch_segments"] + 1  # one segment was delivered twice
    assert len(records(db, "crash")) == 30_000


def test_a_cancelled_run_stops_its_fetch_at_the_next_chunk(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(20_000))
    run_id = new_run(db, source("stop", "csv", str(path), chunk_size=1000))

    def cancel_after_two(_run: int, chunk_no: int) -> None:
        if chunk_no == 1:
            with psycopg.connect(db.info.dsn, autocommit=True) as other:
                other.execute("UPDATE runs SET status = 'cancelled', finished_at = now() WHERE id = %s", (run_id,))

    outcome = fetch_run(db, run_id, enqueue_chunk=cancel_after_two, max_attempts=5, budget=ONE_CHUNK)
    assert outcome is not None and not outcome.continued and outcome.status is None
    assert db.execute("SELECT count(*) FROM raw_chunks WHERE run_id = %s", (run_id,)).fetchone() == (2,)
    assert fetch_run(db, run_id, enqueue_chunk=lambda *_: None, max_attempts=5) is None


@pytest.mark.parametrize("count", [3, SET_LIMIT + 5])
def test_kept_ids_survive_a_segment_boundary(count: int) -> None:
    kept = KeptIds()
    ids = [f"id-{n}" for n in range(count)] + ["lone \udc80 surrogate", "nul\x00id", ""]
    kept.keep(ids)
    restored = load_kept_bytes(dump_kept(kept))
    probe = ["id-0", f"id-{count - 1}", "lone \udc80 surrogate", "nul\x00id", "", "never kept"]
    assert restored.holding(probe) == kept.holding(probe)
    assert restored.holding(probe)[:5] == [0, 1, 2, 3, 4]


@pytest.mark.usefixtures("small_batches")
def test_a_later_copy_of_an_id_in_a_later_segment_still_wins(db: psycopg.Connection, tmp_path: Path) -> None:
    """Repeated ids across segments (repeats.py): the ids a segment kept travel to the next
    one (fetch_kept_ids), so a later copy equal to what an earlier run stored is flagged,
    never left out as unchanged, and wins over the run's earlier, different copy."""
    path = tmp_path / "people.csv"
    rows = people(3000)
    write_csv(path, rows)
    config = source("again", "csv", str(path), chunk_size=100, fields={"title": "name"})
    first = new_run(db, config)
    fetch_in_segments(db, first, SegmentBudget.unlimited())
    commit_all(db, first)

    # Id 5 changes near the top, and comes back as it was near the end, segments later.
    edited = [list(r) for r in rows]
    edited[4][1] = "name 5 edited"
    write_csv(path, edited + [rows[4]])
    run_id = new_run(db, config)
    segments, _ = fetch_in_segments(db, run_id, SegmentBudget(seconds=0, chunks=2**30))  # a segment a batch
    assert segments == 3001 // BATCH + 1
    run = commit_all(db, run_id)
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert records(db, "again")["5"]["title"] == "name 5 v1", "the copy that comes last in the file wins"
