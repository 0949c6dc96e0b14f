"""POST /runs/{id}/cancel and `app.cli cancel`: an active run stops at its next chunk
boundary with the counts of what committed, its checkpoint unmoved, the source free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.api.conftest import AUTH, assert_error, insert_run
from tests.support.faults import SlowPages, post
from tests.support.http_server import LocalHTTPServer
from tests.support.pipeline import get_run, records, source, start_run, wait_for_run
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.normalize.stage import process_chunk

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def chunks_stored(db: psycopg.Connection, run_id: int) -> int:
    return db.execute("SELECT count(*) FROM raw_chunks WHERE run_id = %s", (run_id,)).fetchone()[0]


def checkpoint_row(db: psycopg.Connection, name: str) -> object:
    return db.execute("SELECT value, run_id FROM checkpoints WHERE source = %s", (name,)).fetchone()


@pytest.mark.timeout(180)
async def test_cancel_during_the_fetch_stops_reading_and_frees_the_source(client, db, worker) -> None:
    upstream = [post(i) for i in range(1, 3001)]
    pages = SlowPages(upstream, delay_s=0.3)  # 30 pages of 100: about 9 s of fetching
    with LocalHTTPServer() as http:
        http.route("/slow", pages)
        config = source("slow", "http_json", f"{http.url}/slow", records_path="data", pagination="page",
                        page_size=100, chunk_size=100, incremental_field="id")
        run_id = start_run(db, config)
        wait_until(lambda: chunks_stored(db, run_id) >= 3, 60, "the fetch to store three chunks")

        response = await client.post(f"/runs/{run_id}/cancel", headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == RunStatus.CANCELLED and body["finished_at"] is not None

        served_at_cancel = pages.pages_served
        time.sleep(3)  # long enough for ten more pages had the fetch gone on
        assert pages.pages_served <= served_at_cancel + 2, "the fetch kept reading after the cancel"

        run = get_run(db, run_id)
        assert run["status"] == RunStatus.CANCELLED
        assert run["fetched"] == run["inserted"] + run["updated"] + run["unchanged"] + run["rejected"]
        assert len(records(db, "slow")) == run["inserted"] < len(upstream)
        assert checkpoint_row(db, "slow") is None, "a cancelled run moved the checkpoint"

        pages.delay_s = 0
        again = wait_for_run(db, start_run(db, config), timeout_s=90)  # the source is free
        assert again["status"] == RunStatus.SUCCEEDED, again["error"]
        assert set(records(db, "slow")) == {str(r["id"]) for r in upstream}
        assert get_run(db, run_id)["status"] == RunStatus.CANCELLED  # nothing finalized it later


async def test_cancel_between_fetch_and_normalize_writes_nothing_more(client, db, tmp_path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name\n" + "".join(f"{i},person {i}\n" for i in range(1, 31)))
    config = source("people", "csv", str(path), chunk_size=10)
    with psycopg.connect(db.info.dsn) as conn:
        from app.core.runs import create_run

        run_id = int(create_run(conn, config, "api")["id"])
        sent: list[int] = []
        fetch_run(conn, run_id, enqueue_chunk=lambda _run, chunk_no: sent.append(chunk_no), max_attempts=5)
        assert sent == [0, 1, 2]
        process_chunk(conn, run_id, 0)  # one chunk committed before the cancel

        response = await client.post(f"/runs/{run_id}/cancel", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["counts"] == {"fetched": 10, "inserted": 10, "updated": 0, "unchanged": 0,
                                             "rejected": 0}
        for chunk_no in (1, 2):  # their messages arrive after the cancel
            assert process_chunk(conn, run_id, chunk_no).counts is None
    run = get_run(db, run_id)
    assert (run["status"], run["fetched"], run["inserted"]) == (RunStatus.CANCELLED, 10, 10)
    assert len(records(db, "people")) == 10
    assert checkpoint_row(db, "people") is None  # so the next run reads the file again, whole


async def test_only_an_active_pulled_run_can_be_cancelled(client, db) -> None:
    finished = insert_run(db, "posts", RunStatus.SUCCEEDED)
    error = assert_error(await client.post(f"/runs/{finished}/cancel", headers=AUTH), 409)
    assert "already finished" in error["message"] and "succeeded" in error["message"]
    assert_error(await client.post("/runs/987654/cancel", headers=AUTH), 404)
    window = insert_run(db, "orders", RunStatus.RUNNING, trigger="webhook")
    error = assert_error(await client.post(f"/runs/{window}/cancel", headers=AUTH), 409)
    assert "webhook window" in error["message"]
    queued = insert_run(db, "posts", RunStatus.QUEUED)
    assert_error(await client.post(f"/runs/{queued}/cancel"), 401)
    assert get_run(db, queued)["status"] == RunStatus.QUEUED
    response = await client.post(f"/runs/{queued}/cancel", headers=AUTH)
    assert response.status_code == 200 and response.json()["status"] == RunStatus.CANCELLED


def test_cli_cancel(db) -> None:
    queued = insert_run(db, "posts", RunStatus.QUEUED)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)

    first = cli("cancel", str(queued))
    assert first.returncode == 0, first.stdout + first.stderr
    assert RunStatus.CANCELLED in first.stdout
    second = cli("cancel", str(queued))
    assert second.returncode == 1 and "already finished" in second.stderr
