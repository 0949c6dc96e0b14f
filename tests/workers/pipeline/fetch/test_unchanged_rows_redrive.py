"""A fetch re-driven after a crash, in a run where some rows were left out unchanged, must
cut the same chunks as the first attempt: chunks already stored are kept as they were, so
any other cut would lose rows. In-process (no worker), to stop the run between stages."""

from __future__ import annotations

import csv
from pathlib import Path

import psycopg

from app.core.run_status import RunStatus
from app.core.runs import create_run
from tests.support.pipeline import get_run, records, source
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.normalize.stage import process_chunk


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows(rows)


def test_a_redriven_fetch_cuts_the_same_chunks(db: psycopg.Connection, database: str, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    rows = [[str(i), f"name {i}"] for i in range(1, 41)]
    write_csv(path, rows)
    config = source("people", "csv", str(path), chunk_size=5, fields={"title": "name"})
    with psycopg.connect(database) as conn:

        def fetch(run_id: int) -> list[int]:
            sent: list[int] = []
            fetch_run(conn, run_id, enqueue_chunk=lambda _run, chunk_no: sent.append(chunk_no), max_attempts=5)
            return sent

        first = create_run(conn, config, "api")["id"]
        for chunk_no in fetch(first):
            process_chunk(conn, first, chunk_no)
        assert get_run(db, first)["status"] == RunStatus.SUCCEEDED

        for i in range(0, 40, 4):  # ten changed rows: two chunks of five
            rows[i][1] = f"renamed {i + 1}"
        write_csv(path, rows)
        second = create_run(conn, config, "api")["id"]
        assert fetch(second) == [0, 1]
        process_chunk(conn, second, 0)  # the first chunk commits, then the fetch "crashes"
        db.execute("UPDATE runs SET chunks_total = NULL WHERE id = %s", (second,))

        assert fetch(second) == [1]  # the same cut: chunk 0 is committed, chunk 1 still to do
        process_chunk(conn, second, 1)

    run = get_run(db, second)
    assert (run["status"], run["chunks_total"]) == (RunStatus.SUCCEEDED, 2)
    assert (run["fetched"], run["updated"], run["unchanged"]) == (40, 10, 30)
    assert {key: rec["title"] for key, rec in records(db, "people").items()} == {row[0]: row[1] for row in rows}
