"""Order within a run: when an id appears in more than one chunk, the copy that comes last in
the source wins, whatever order the chunks commit in.

In-process (no worker): the stages are called directly on the test database, so that the
chunks can be committed in any order, as a crash, a retry or a slow worker would.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from app.core.raw_format import INSERT_RAW_CHUNK, raw_chunk_params, raw_row
from app.core.run_status import RunStatus
from app.core.runs import create_run
from app.core.sources_config import SourceConfig
from tests.support.pipeline import get_run, records, source
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.finalize import fail_run
from workers.pipeline.normalize.stage import process_chunk
from workers.pipeline.push import close_window


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows(rows)


def people(n: int) -> list[list[str]]:
    return [[str(i), f"name {i}"] for i in range(1, n + 1)]


def fetch(conn: psycopg.Connection, config: SourceConfig) -> tuple[int, list[int]]:
    """Create a run and fetch it; (run id, the chunks it handed on)."""
    run_id = int(create_run(conn, config, "api")["id"])
    sent: list[int] = []
    fetch_run(conn, run_id, enqueue_chunk=lambda _run, chunk_no: sent.append(chunk_no), max_attempts=5)
    return run_id, sent


def commit(conn: psycopg.Connection, run_id: int, chunks: list[int]) -> dict[str, Any]:
    """Commit the chunks in the order given; the finished run."""
    for chunk_no in chunks:
        assert process_chunk(conn, run_id, chunk_no).counts is not None
    run = get_run(conn, run_id)
    assert run["status"] == RunStatus.SUCCEEDED, run
    return run


def counts(run: dict[str, Any]) -> tuple[int, int, int, int]:
    assert run["fetched"] == run["inserted"] + run["updated"] + run["unchanged"] + run["rejected"], run
    return run["inserted"], run["updated"], run["unchanged"], run["rejected"]


def titles(db: psycopg.Connection, name: str) -> dict[str, str]:
    return {key: record["title"] for key, record in records(db, name).items()}


@pytest.mark.parametrize("order", ["in order", "newer first"])
def test_the_last_copy_of_an_id_wins_on_a_first_load(
    db: psycopg.Connection, database: str, tmp_path: Path, order: str
) -> None:
    path = tmp_path / "people.csv"
    rows = people(10)
    rows[2][1] = "old 3"
    write_csv(path, [*rows, ["3", "new 3"]])  # chunk 0: rows 1-5, chunk 1: 6-10, chunk 2: the later copy of 3
    config = source("people", "csv", str(path), chunk_size=5, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        run_id, chunks = fetch(conn, config)
        assert chunks == [0, 1, 2]
        run = commit(conn, run_id, chunks if order == "in order" else [2, 1, 0])

    assert titles(db, "people")["3"] == "new 3"
    stored = db.execute("SELECT last_run_id, last_chunk_no FROM records WHERE external_id = '3'").fetchone()
    assert stored == (run_id, 2)
    # In order, the later copy updates the record; committed first, it inserts it and the
    # older copy, arriving after it, changes nothing.
    assert counts(run) == ((10, 1, 0, 0) if order == "in order" else (10, 0, 1, 0))


def test_a_last_copy_equal_to_the_first_still_beats_the_one_between(
    db: psycopg.Connection, database: str, tmp_path: Path
) -> None:
    """Copies X, Y, X of one id in three chunks: with the first committed, the last finds
    its content stored already, yet must record its position, or Y, committed after it,
    would win."""
    path = tmp_path / "people.csv"
    write_csv(path, [["1", "X"], ["1", "Y"], ["1", "X"]])
    config = source("people", "csv", str(path), chunk_size=1, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        run_id, chunks = fetch(conn, config)
        assert chunks == [0, 1, 2]
        run = commit(conn, run_id, [0, 2, 1])

    assert titles(db, "people") == {"1": "X"}
    assert counts(run) == (1, 0, 2, 0)


def write_json(path: Path, rows: list[list[str]]) -> None:
    path.write_bytes(orjson.dumps([{"id": key, "name": name} for key, name in rows]))


@pytest.mark.parametrize(("on_drift", "order"), [("record", "in order"), ("record", "newer first"),
                                                 ("reject", "newer first")])
def test_a_later_copy_equal_to_the_stored_record_still_wins_on_a_rerun(
    db: psycopg.Connection, database: str, tmp_path: Path, order: str, on_drift: str
) -> None:
    """The later copy is what the previous run stored: the fetch stage would leave it out
    unchanged (on_drift = "record"; it compares a chunk's worth of records at a time), or
    the upsert would find its hash unchanged ("reject": the fetch stage leaves nothing
    out). Neither may let the older copy win."""
    path = tmp_path / "people.json"
    write_json(path, [*people(10), ["3", "new 3"]])
    config = source("people", "http_json", str(path), chunk_size=5, fields={"title": "name"}, on_drift=on_drift)
    with psycopg.connect(database) as conn:
        first, chunks = fetch(conn, config)
        commit(conn, first, chunks)
        assert titles(db, "people")["3"] == "new 3"

        renamed = [[key, f"renamed {key}"] for key, _ in people(10)]
        renamed[2][1] = "old 3"  # the earlier copy changes, the later one does not
        write_json(path, [*renamed, ["3", "new 3"]])
        second, chunks = fetch(conn, config)
        assert chunks == [0, 1, 2]
        run = commit(conn, second, chunks if order == "in order" else chunks[::-1])

    assert titles(db, "people") == {**{key: name for key, name in renamed}, "3": "new 3"}
    # In order, the older copy of 3 updates the record and the later one puts it back;
    # the later one first finds it unchanged, and the older one, after it, changes nothing.
    assert counts(run) == ((0, 11, 0, 0) if order == "in order" else (0, 9, 2, 0))


def test_a_later_copy_in_another_batch_of_a_large_file_is_not_left_out(
    db: psycopg.Connection, database: str, tmp_path: Path
) -> None:
    """CSV rows are compared 5,000 at a time (csv_source.ROWS_PER_BATCH): the copies of an id
    in two batches are not "repeated in a batch", yet the later one must not be left out."""
    path = tmp_path / "big.csv"
    rows = people(6000)
    write_csv(path, [*rows, ["3", "new 3"]])
    config = source("big", "csv", str(path), chunk_size=1000, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        first, chunks = fetch(conn, config)
        commit(conn, first, chunks)

        rows[2][1] = "old 3"
        write_csv(path, [*rows, ["3", "new 3"]])
        second, chunks = fetch(conn, config)
        run = commit(conn, second, chunks[::-1])

    assert titles(db, "big")["3"] == "new 3"
    assert run["fetched"] == 6001 and counts(run)[:2] == (0, 0)


def test_every_copy_but_the_last_loses_whatever_the_commit_order(
    db: psycopg.Connection, database: str, tmp_path: Path
) -> None:
    """Three copies of every id in six chunks, committed in an order that puts older
    chunks after newer ones: every record ends as its last copy."""
    path = tmp_path / "versions.csv"
    ids = range(1, 11)
    write_csv(path, [[str(i), f"v{version} of {i}"] for version in (1, 2, 3) for i in ids])
    config = source("versions", "csv", str(path), chunk_size=5, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        run_id, chunks = fetch(conn, config)
        assert chunks == [0, 1, 2, 3, 4, 5]
        run = commit(conn, run_id, [5, 2, 3, 0, 4, 1])

    assert titles(db, "versions") == {str(i): f"v3 of {i}" for i in ids}
    # Chunks 0, 2 and 4 hold ids 1-5 (v1, v2, v3), chunks 1, 3 and 5 ids 6-10. Chunk 5
    # inserts 6-10, then 3 and 1 find them newer; chunk 2 inserts 1-5, 0 finds them
    # newer, 4 updates them.
    assert counts(run) == (10, 5, 15, 0)
    positions = db.execute("SELECT DISTINCT last_chunk_no FROM records WHERE source = 'versions'").fetchall()
    assert sorted(positions) == [(4,), (5,)]


def push_window(db: psycopg.Connection, database: str, config: SourceConfig, deliveries: list[list[dict[str, Any]]],
                order: str) -> dict[str, Any]:
    """Store the deliveries as a push run's window does, close it, commit its chunks."""
    row = db.execute(
        "INSERT INTO runs (source, trigger, status, config, started_at) VALUES (%s, 'webhook', %s, %s, now())"
        " RETURNING id",
        (config.name, RunStatus.RUNNING, orjson.dumps(config.snapshot()).decode()),
    ).fetchone()
    assert row is not None
    run_id = int(row[0])
    for chunk_no, delivery in enumerate(deliveries):
        db.execute(INSERT_RAW_CHUNK, raw_chunk_params(
            run_id=run_id, chunk_no=chunk_no, rows=[raw_row(record, n) for n, record in enumerate(delivery, 1)],
        ))
    with psycopg.connect(database) as conn:
        sent: list[int] = []
        close_window(conn, run_id, enqueue_chunk=lambda _run, chunk_no: sent.append(chunk_no))
        return commit(conn, run_id, sent if order == "in order" else sent[::-1])


def test_an_older_delivery_of_a_push_window_cannot_overwrite_a_newer_one(
    db: psycopg.Connection, database: str
) -> None:
    config = SourceConfig(name="orders", kind="webhook", id_field="order_id", secret_env="ORDERS_SECRET",
                          chunk_size=2)

    def states() -> dict[str, str]:
        return {key: record["data"]["state"] for key, record in records(db, "orders").items()}

    run = push_window(db, database, config, [
        [{"order_id": "o1", "state": "placed"}, {"order_id": "o2", "state": "placed"}],
        [{"order_id": "o3", "state": "placed"}, {"order_id": "o4", "state": "placed"}],
        [{"order_id": "o1", "state": "shipped"}],
    ], "newer first")
    assert states() == {"o1": "shipped", "o2": "placed", "o3": "placed", "o4": "placed"}
    assert counts(run) == (4, 0, 1, 0)

    # The next window holds o2 twice, its last delivery what the store holds already.
    run = push_window(db, database, config, [
        [{"order_id": "o2", "state": "cancelled"}, {"order_id": "o5", "state": "placed"}],
        [{"order_id": "o2", "state": "placed"}],
    ], "newer first")
    assert states()["o2"] == "placed"
    assert counts(run) == (1, 0, 2, 0)


def test_an_unchanged_file_is_read_again_after_a_run_that_needed_a_retry(
    db: psycopg.Connection, database: str, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(10))
    config = source("people", "csv", str(path), chunk_size=5, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        first, chunks = fetch(conn, config)
        conn.execute("UPDATE raw_chunks SET attempts = 2 WHERE run_id = %s AND chunk_no = 1", (first,))
        conn.commit()  # as a chunk that was delivered twice (its first worker died)
        commit(conn, first, chunks)
        assert db.execute("SELECT file_hash FROM checkpoints WHERE source = 'people'").fetchone() == (None,)

        # The same file is read again, not skipped by its hash (its rows are then found
        # unchanged one by one, by their raw digests).
        second, chunks = fetch(conn, config)
        assert counts(commit(conn, second, chunks)) == (0, 0, 10, 0)
        assert db.execute("SELECT file_hash FROM checkpoints WHERE source = 'people'").fetchone() != (None,)

        third, chunks = fetch(conn, config)  # after a clean run, the hash skips the file again
        assert chunks == []
        run = get_run(db, third)
        assert (run["status"], run["fetched"]) == (RunStatus.SUCCEEDED, 0)


def test_an_unchanged_file_is_read_again_after_a_failed_run(
    db: psycopg.Connection, database: str, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, people(10))
    config = source("people", "csv", str(path), chunk_size=5, fields={"title": "name"})
    with psycopg.connect(database) as conn:
        first, chunks = fetch(conn, config)
        commit(conn, first, chunks)

        # Another version of the file fails half-way: its first chunk committed.
        write_csv(path, [[key, f"failed {key}"] for key, _ in people(10)])
        failed, chunks = fetch(conn, config)
        assert chunks == [0, 1]
        process_chunk(conn, failed, 0)
        fail_run(conn, failed, "the upstream went away")
        assert get_run(db, failed)["status"] == RunStatus.FAILED
        assert titles(db, "people")["1"] == "failed 1"

        write_csv(path, people(10))  # back to the file the checkpoint's hash describes
        repair, chunks = fetch(conn, config)
        assert counts(commit(conn, repair, chunks)) == (0, 5, 5, 0)

    assert titles(db, "people") == {key: name for key, name in people(10)}
