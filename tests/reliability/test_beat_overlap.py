"""Two beat processes (a deployment mistake) and a schedule shorter than the fetch:
runs of one source never overlap, and most ticks are refused by the database.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from app.core.run_status import ACTIVE, RunStatus
from tests.support.faults import ProcessSet, assert_counts, assert_exact_records, post, scalar, wait_until
from tests.support.http_server import LocalHTTPServer, Request, Response

WINDOW_S = 8
FETCH_S = 2.0


@pytest.mark.timeout(180)
def test_two_beats_never_start_overlapping_runs(
    db: psycopg.Connection, procs: ProcessSet, http: LocalHTTPServer, tmp_path: Path
) -> None:
    upstream = [post(i) for i in range(1, 6)]

    def slow(_request: Request) -> Response:
        time.sleep(FETCH_S)
        return Response(200, json.dumps(upstream))

    http.route("/slow", slow)
    sources = tmp_path / "sources.toml"
    sources.write_text(
        f'[sources.ticking]\nkind = "http_json"\nurl = "{http.url}/slow"\nid_field = "id"\nschedule = "every 1s"\n'
    )
    procs.worker("w", concurrency=3, SOURCES_FILE=str(sources))
    beats = [procs.beat(f"beat{i}", SOURCES_FILE=str(sources)) for i in (1, 2)]
    time.sleep(WINDOW_S)
    for beat in beats:
        beat.stop()
    ticks = sum(beat.sent("source:ticking") for beat in beats)

    def all_finished() -> bool:
        active = scalar(db, "SELECT count(*) FROM runs WHERE status = ANY(%s)", (list(ACTIVE),))
        return active == 0

    wait_until(all_finished, 30, "the last scheduled run to finish")
    with db.cursor(row_factory=dict_row) as cur:
        runs = cur.execute("SELECT * FROM runs WHERE source = 'ticking' ORDER BY created_at").fetchall()

    assert ticks >= WINDOW_S, f"the beats ticked only {ticks} times in {WINDOW_S}s"
    assert runs, "no scheduled run was created"
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later["created_at"] >= earlier["finished_at"], f"runs overlap: {earlier} / {later}"
    for run in runs:
        assert run["trigger"] == "schedule" and run["status"] == RunStatus.SUCCEEDED, run
        assert run["started_at"] is not None and run["started_at"] <= run["finished_at"]
        assert_counts(run, len(upstream))
    assert len(runs) * 3 <= ticks, f"{len(runs)} runs for {ticks} ticks: the beats were not neutralised"
    assert len(runs) <= WINDOW_S / FETCH_S + 1
    assert_exact_records(db, "ticking", {str(r["id"]) for r in upstream})
    print(f"{ticks} beat ticks, {len(runs)} runs")
