"""Webhook deliveries with hostile records, and deliveries while the broker is down: an
accepted delivery is never lost, a valid signed body never gets a 500, and one record's
faults fail that record only (real worker, real API process where the broker matters)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import orjson
import psycopg
import pytest

from app.core.enqueue import enqueue_close_push
from app.core.run_status import RunStatus
from tests.api.test_webhooks import SECRET, signed_headers
from tests.conftest import ARTIFACTS, ROOT
from tests.support.hostile import BIG, check_hostile_outcome, hostile_records_json, huge_text
from tests.support.pipeline import records, wait_for_run
from workers.pipeline.reconcile import reconcile_stalled


@pytest.fixture
async def hook_client(make_client, monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    monkeypatch.setenv("ORDERS_WEBHOOK_SECRET", SECRET)
    return await make_client(webhook_window_s=1.0)


@pytest.mark.usefixtures("worker")
async def test_hostile_records_in_a_signed_delivery_are_stored_exactly_or_rejected(
    hook_client, db: psycopg.Connection
) -> None:
    body = hostile_records_json().replace('"id"', '"order_id"').encode()
    response = await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 9
    run = wait_for_run(db, response.json()["run_id"], timeout_s=60)
    assert (run["status"], run["fetched"], run["inserted"], run["rejected"]) == (RunStatus.PARTIAL, 9, 6, 3), run
    check_hostile_outcome(db, "orders", run["id"])
    # and they read back exactly, without a 500
    record_id = db.execute("SELECT id FROM records WHERE external_id = 'big-value'").fetchone()[0]
    one = await hook_client.get(f"/data/{record_id}")
    assert one.status_code == 200 and one.json()["data"]["n"] == 3 * BIG, one.text
    page = await hook_client.get("/data", params={"source": "orders"})
    assert {item["data"]["order_id"] for item in page.json()["items"]} >= {BIG, BIG + 1}
    rejected = await hook_client.get("/rejects", params={"run_id": run["id"]})
    assert rejected.status_code == 200 and len(rejected.json()["items"]) == 3


async def test_json_nested_deeper_than_can_be_read_is_refused_before_the_202(
    hook_client, db: psycopg.Connection
) -> None:
    body = b'{"order_id": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body))
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]["message"]
    assert db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 0


@pytest.mark.usefixtures("worker")
async def test_an_oversized_record_in_a_window_does_not_cost_the_other_deliveries(
    hook_client, db: psycopg.Connection
) -> None:
    deliveries = [
        [{"order_id": "A-1", "title": "first sender"}],
        [{"order_id": "B-1", "title": "second sender"}, {"order_id": "B-big", "title": "big", "content": huge_text()},
         {"order_id": "B-2", "title": "second sender again"}],
        [{"order_id": "C-1", "title": "third sender"}],
    ]
    run_ids = set()
    for items in deliveries:  # one batching window
        body = orjson.dumps(items)
        response = await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body))
        assert response.status_code == 202, response.text
        run_ids.add(response.json()["run_id"])
    assert len(run_ids) == 1
    run = wait_for_run(db, run_ids.pop(), timeout_s=120)
    assert (run["status"], run["inserted"]) == (RunStatus.SUCCEEDED, 5), run
    assert set(records(db, "orders")) == {"A-1", "B-1", "B-big", "B-2", "C-1"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


@pytest.fixture
def api_without_broker(db: psycopg.Connection) -> Iterator[str]:
    """A real `uvicorn app.main:app` whose broker URL points at a closed port (Redis itself,
    for rate limits and health, is up)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ORDERS_WEBHOOK_SECRET": SECRET,
           "CELERY_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "uvicorn-no-broker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not start; see test-artifacts/uvicorn-no-broker.log")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.usefixtures("worker")
def test_a_delivery_stored_while_the_broker_is_down_is_202_at_once_and_lands_after_the_reconciler(
    api_without_broker: str, db: psycopg.Connection
) -> None:
    body = orjson.dumps([{"order_id": "D-1", "title": "while the broker was down"}, {"order_id": "D-2"}])
    started = time.monotonic()
    response = httpx.post(f"{api_without_broker}/webhooks/orders", content=body, headers=signed_headers(body),
                          timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert elapsed < 2.5, f"answered after {elapsed:.1f} s"
    run_id = response.json()["run_id"]
    time.sleep(1.5)
    assert db.execute("SELECT chunks_total FROM runs WHERE id = %s", (run_id,)).fetchone() == (None,)  # no close sent
    # The reconciler's pass (as beat runs it, with a timeout the test can wait for) closes the window.
    with psycopg.connect(db.info.dsn) as conn:
        report = reconcile_stalled(conn, timeout_s=1, max_attempts=5, enqueue_fetch=lambda _run_id: None,
                           enqueue_chunk=lambda _run_id, _chunk_no: None,
                           enqueue_close_push=lambda window: enqueue_close_push(window, 0))
    assert report.push_windows_closed == [run_id]
    run = wait_for_run(db, run_id, timeout_s=60)
    assert (run["status"], run["inserted"]) == (RunStatus.SUCCEEDED, 2), run
    assert set(records(db, "orders")) == {"D-1", "D-2"}
