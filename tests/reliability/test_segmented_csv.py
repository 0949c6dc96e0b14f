"""A long CSV fetch in segments, with a real worker and beat, scaled down: TASK_TIMEOUT_S=20
(segments of at most 5 s) and a few chunks per segment, so a file of a few hundred
thousand rows takes dozens of fetch tasks."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.faults import ProcessSet, assert_counts, assert_exact_records, wait_until, write_csv
from tests.support.pipeline import get_run, source, start_run, wait_for_run

SCALED = {"TASK_TIMEOUT_S": "20", "FETCH_SEGMENT_CHUNKS": "4"}


@pytest.mark.scenario
@pytest.mark.timeout(300)
def test_killing_the_whole_worker_mid_csv_re_reads_at_most_one_segment(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    upstream = write_csv(path, 300_000)
    first = procs.worker("first", concurrency=2, **SCALED)
    procs.beat(**SCALED)
    config = source("bigcsv", "csv", str(path), chunk_size=1000, fields={"title": "title", "content": "body"})

    run_id = start_run(db, config)
    wait_until(lambda: get_run(db, run_id)["fetch_segments"] >= 3, 120, "three fetch segments to commit")
    run = get_run(db, run_id)
    assert run["chunks_total"] is None, "the fetch finished before the kill"
    first.kill()  # SIGKILL to the process group: main process and every pool child, no ack
    position_at_kill = get_run(db, run_id)["fetch_position"]

    procs.worker("second", concurrency=2, **SCALED)
    run = wait_for_run(db, run_id, timeout_s=240)

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, len(upstream), inserted=len(upstream))
    assert_exact_records(db, "bigcsv", upstream)
    # Every fetch task but at most one (the one killed mid-segment) ended its segment: the
    # file was read again from the last committed position, never from the top.
    assert run["fetch_attempts"] - run["fetch_segments"] <= 1, run
    assert run["fetch_segments"] >= 5
    assert position_at_kill is not None and position_at_kill["source"]["offset"] > 0
    assert run["fetch_progress"]["bytes_total"] == path.stat().st_size and run["fetch_progress"]["done"]


def write_wide_csv(path: Path, n: int) -> set[str]:
    """A CSV of n rows of about 1 KB each (ids 1..n); the upstream id set."""
    filler = "lorem ipsum dolor sit amet, " * 36
    with path.open("w", encoding="utf-8") as out:
        out.write("id,title,body,n\n")
        for i in range(1, n + 1):
            out.write(f'{i},title {i},"{i} {filler}",{i % 97}\n')
    return {str(i) for i in range(1, n + 1)}


@pytest.mark.scenario
@pytest.mark.timeout(420)
def test_a_csv_larger_than_100_mib_ingests_with_default_settings(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    path = tmp_path / "huge.csv"
    upstream = write_wide_csv(path, 110_000)  # rows of about 1 KB: the bytes of a big export, fewer rows to load
    assert path.stat().st_size > 100 * 1024 * 1024
    procs.worker("defaults", concurrency=2, TASK_TIMEOUT_S="300")
    config = source("huge", "csv", str(path), fields={"title": "title", "content": "body"})  # default chunk_size

    started = time.monotonic()
    run = wait_for_run(db, start_run(db, config), timeout_s=400)
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, len(upstream), inserted=len(upstream))
    assert db.execute("SELECT count(*) FROM records WHERE source = 'huge'").fetchone() == (len(upstream),)
    print(f"{path.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.0f} s, "
          f"{run['fetch_segments']} segments")
