"""A worker killed between chunks: the chunk it held commits after newer copies of its ids,
and the newest copy still wins, at every kill point.

The file holds every id six times, one version after another, so each chunk's ids come
back, newer, five chunks later. A single-process worker takes the run's chunks in order
and is SIGKILLed (its whole process group) while it holds one; a second worker commits
every later chunk at once, and the killed chunk commits only when the reconciler
re-drives it, TASK_TIMEOUT_S later: older copies commit after newer ones, every time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.faults import RECOVERY_BOUND_S, ProcessSet, assert_counts, scalar, wait_until
from tests.support.pipeline import records, source, start_run, wait_for_run

IDS = 500
VERSIONS = 6
CHUNK_SIZE = 100  # chunk c holds version c // 5 + 1 of ids (c % 5) * 100 + 1 .. + 100
CHUNKS = IDS * VERSIONS // CHUNK_SIZE
KILL_POINTS = (2, 9, 16)  # chunks committed before the kill: versions 1, 2 and 4 are held

_IN_FLIGHT = (
    "SELECT count(*) FROM raw_chunks c WHERE c.run_id = %s AND c.attempts > 0 AND NOT EXISTS"
    " (SELECT 1 FROM chunk_ledger l WHERE l.run_id = c.run_id AND l.chunk_no = c.chunk_no)"
)
_COMMITTED = "SELECT count(*) FROM chunk_ledger WHERE run_id = %s"
# Pairs of chunks holding the same ids where the older copies committed after the newer.
_INVERSIONS = """
SELECT count(*) FROM chunk_ledger older JOIN chunk_ledger newer
  ON newer.run_id = older.run_id AND newer.chunk_no > older.chunk_no
 AND newer.chunk_no %% %(per_version)s = older.chunk_no %% %(per_version)s
WHERE older.run_id = %(run_id)s AND older.committed_at > newer.committed_at
"""


def write_versions(path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows([i, f"v{version} of {i}"] for version in range(1, VERSIONS + 1) for i in range(1, IDS + 1))


@pytest.mark.timeout(300)
def test_the_newest_copy_wins_when_a_killed_worker_s_chunk_commits_late(
    db: psycopg.Connection, procs: ProcessSet, tmp_path: Path
) -> None:
    path = tmp_path / "versions.csv"
    write_versions(path)
    config = source("versions", "csv", str(path), chunk_size=CHUNK_SIZE, fields={"title": "name"})
    procs.beat()  # the reconciler re-drives the chunk the killed worker held

    for point, kill_after in enumerate(KILL_POINTS):
        first = procs.worker(f"first-{point}", concurrency=1)
        run_id = start_run(db, config)
        wait_until(
            lambda: scalar(db, _COMMITTED, (run_id,)) >= kill_after and scalar(db, _IN_FLIGHT, (run_id,)) > 0,  # noqa: B023
            60, f"chunk {kill_after} to be in flight", interval_s=0.005,
        )
        first.kill()  # SIGKILL to the process group: no ack, no cleanup
        second = procs.worker(f"second-{point}", concurrency=2)
        run = wait_for_run(db, run_id, timeout_s=RECOVERY_BOUND_S)
        second.stop()

        assert run["status"] == RunStatus.SUCCEEDED, run["error"]
        assert_counts(run, IDS * VERSIONS)  # every run reads the file: the one before it crashed
        assert scalar(db, _INVERSIONS, {"run_id": run_id, "per_version": CHUNKS // VERSIONS}) > 0, (
            f"kill point {kill_after}: no older chunk committed after a newer one; the test proved nothing"
        )
        stored = records(db, "versions")
        wrong = {key: rec["title"] for key, rec in stored.items() if rec["title"] != f"v{VERSIONS} of {key}"}
        assert len(stored) == IDS and not wrong, (
            f"kill point {kill_after}: {len(wrong)} older copies won, e.g. {sorted(wrong.items())[:3]}"
        )
        assert {rec["last_chunk_no"] for rec in stored.values()} == set(range(CHUNKS - CHUNKS // VERSIONS, CHUNKS))
        # A run that needed a re-drive leaves no file hash: the next one reads the file again.
        assert scalar(db, "SELECT file_hash FROM checkpoints WHERE source = 'versions'") is None
