"""GET /runs/{id} `progress`: where a run's fetch is, read from the run row and its ledger
(app/core/progress.py), and the same numbers from a real fetch through the worker."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest

from app.core.progress import describe, human_bytes
from app.core.run_status import RunStatus
from tests.api.conftest import insert_run
from tests.support.faults import SlowPages, post
from tests.support.http_server import LocalHTTPServer
from tests.support.pipeline import source, start_run, wait_for_run

PROGRESS_KEYS = {
    "stage", "segments", "pages", "items_read", "bytes_read", "bytes_total", "fraction_read",
    "chunks_stored", "chunks_committed", "chunks_total", "restarts",
}


def commit_chunks(db: psycopg.Connection, run_id: int, chunk_nos: range) -> None:
    """Ledger rows, as normalize_and_upsert leaves one per committed chunk."""
    for chunk_no in chunk_nos:
        db.execute(
            "INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected)"
            " VALUES (%s, %s, 10, 10, 0, 0, 0)",
            (run_id, chunk_no),
        )


async def progress_of(client, run_id: int) -> dict:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()["progress"]


async def test_a_queued_run_has_read_nothing(client, db):
    run_id = insert_run(db, "posts", RunStatus.QUEUED)
    assert await progress_of(client, run_id) == {
        "stage": "queued", "segments": 0, "pages": None, "items_read": None, "bytes_read": None,
        "bytes_total": None, "fraction_read": None, "chunks_stored": 0, "chunks_committed": 0,
        "chunks_total": None, "restarts": 0,
    }


async def test_stages_follow_the_fetch_then_the_chunks(client, db):
    fetch_progress = {"segments": 3, "chunks": 5, "items": 50, "bytes_read": 300_000_000,
                      "bytes_total": 812_000_000, "restarts": 1}
    run_id = insert_run(db, "passengers", RunStatus.RUNNING, fetch_segments=2,
                        fetch_progress=orjson.dumps(fetch_progress).decode())
    commit_chunks(db, run_id, range(4))

    fetching = await progress_of(client, run_id)
    assert set(fetching) == PROGRESS_KEYS
    assert fetching["stage"] == "fetching"
    assert fetching["segments"] == 3  # the segment in flight counts
    assert (fetching["bytes_read"], fetching["bytes_total"]) == (300_000_000, 812_000_000)
    assert fetching["fraction_read"] == pytest.approx(0.3695, abs=1e-4)
    assert (fetching["items_read"], fetching["pages"]) == (50, None)
    assert (fetching["chunks_stored"], fetching["chunks_committed"], fetching["chunks_total"]) == (5, 4, None)
    assert fetching["restarts"] == 1
    assert describe(fetching) == (
        "fetching: 37% of 812 MB, 50 items read, 3 segments, 5 chunks stored, 4 committed, 1 restart"
    )

    # The fetch read the whole source: six chunks in all, four committed.
    done = {**fetch_progress, "segments": 4, "chunks": 6, "bytes_read": 812_000_000, "done": True}
    db.execute("UPDATE runs SET chunks_total = 6, fetch_segments = 4, fetch_progress = %s::jsonb WHERE id = %s",
               (orjson.dumps(done).decode(), run_id))
    normalizing = await progress_of(client, run_id)
    assert normalizing["stage"] == "normalizing"
    assert (normalizing["chunks_stored"], normalizing["chunks_committed"], normalizing["chunks_total"]) == (6, 4, 6)
    assert (normalizing["segments"], normalizing["fraction_read"]) == (4, 1.0)
    assert "4/6 chunks committed" in describe(normalizing)

    commit_chunks(db, run_id, range(4, 6))
    db.execute("UPDATE runs SET status = %s, finished_at = now() WHERE id = %s", (RunStatus.SUCCEEDED, run_id))
    finished = await progress_of(client, run_id)
    assert finished["stage"] == "finished" and finished["chunks_committed"] == 6
    assert describe(finished).startswith("finished: 812 MB read, 50 items read, 4 segments, 6/6 chunks committed")


async def test_a_run_cancelled_mid_fetch_shows_what_committed(client, db):
    run_id = insert_run(db, "posts", RunStatus.CANCELLED, fetch_segments=1, error="cancelled on request",
                        fetch_progress=orjson.dumps({"segments": 2, "chunks": 3, "pages": 30}).decode())
    commit_chunks(db, run_id, range(2))
    progress = await progress_of(client, run_id)
    assert progress["stage"] == "finished" and progress["pages"] == 30 and progress["segments"] == 2
    assert (progress["chunks_stored"], progress["chunks_committed"], progress["chunks_total"]) == (3, 2, None)


async def test_malformed_stored_numbers_read_as_unknown(client, db):
    odd = {"bytes_read": "lots", "bytes_total": 0, "pages": -1, "items": True, "chunks": None}
    run_id = insert_run(db, "posts", RunStatus.RUNNING, fetch_progress=orjson.dumps(odd).decode())
    progress = await progress_of(client, run_id)
    assert (progress["bytes_read"], progress["bytes_total"], progress["fraction_read"]) == (None, 0, None)
    assert (progress["pages"], progress["items_read"], progress["chunks_stored"]) == (None, None, 0)


async def test_the_list_stays_without_progress(client, db):
    insert_run(db, "posts", RunStatus.RUNNING)
    [run] = (await client.get("/runs")).json()["runs"]
    assert "progress" not in run


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1500, 812_000_000, 5_200_000_000)] == [
        "0 B", "999 B", "1.5 kB", "812 MB", "5.2 GB"
    ]


@pytest.mark.timeout(120)
async def test_a_real_fetch_reports_its_progress(client, db, worker):
    upstream = [post(i) for i in range(1, 1001)]
    pages = SlowPages(upstream, delay_s=0.3)  # 10 pages of 100, one chunk each
    with LocalHTTPServer() as http:
        http.route("/slow", pages)
        config = source("slow", "http_json", f"{http.url}/slow", records_path="data", pagination="page",
                        page_size=100, chunk_size=100)
        run_id = start_run(db, config)
        deadline = time.monotonic() + 60
        while (progress := await progress_of(client, run_id))["chunks_stored"] < 2:
            assert time.monotonic() < deadline, f"the fetch stored no two chunks: {progress}"
            time.sleep(0.1)
        assert progress["stage"] == "fetching" and progress["chunks_total"] is None
        assert progress["segments"] >= 1 and progress["chunks_committed"] <= progress["chunks_stored"]

        pages.delay_s = 0
        assert wait_for_run(db, run_id)["status"] == RunStatus.SUCCEEDED
    finished = await progress_of(client, run_id)
    assert finished["stage"] == "finished"
    assert finished["chunks_total"] == finished["chunks_stored"] == finished["chunks_committed"] == 10
    assert finished["segments"] >= 1
