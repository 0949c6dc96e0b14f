"""POST /webhooks/{source}: Standard Webhooks signatures, once-only delivery ids, and
pushed records landing through the same pipeline as pulled ones (real worker)."""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import orjson
import psycopg
import pytest

from app.api.webhooks.signature import SignatureError, sign, verify
from app.core.run_status import RunStatus
from tests.api.conftest import assert_error
from tests.support.pipeline import records, wait_for_run

SECRET = "whsec_" + base64.b64encode(b"orders-signing-key-0123456789").decode()


def signed_headers(body: bytes, *, secret: str = SECRET, webhook_id: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
        "content-type": "application/json",
    }


@pytest.fixture
async def hook_client(make_client, monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    monkeypatch.setenv("ORDERS_WEBHOOK_SECRET", SECRET)
    return await make_client(webhook_window_s=0.5)


def stored(db: psycopg.Connection) -> tuple[int, int]:
    deliveries = db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]
    chunks = db.execute("SELECT count(*) FROM raw_chunks").fetchone()[0]
    return deliveries, chunks


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example from the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    verify(secret, webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp="1614265330",
           signature_header=f"v1,bogus {expected}", body=body, now=1614265330)
    with pytest.raises(SignatureError):
        verify(secret, webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp="1614265330",
               signature_header=expected, body=body + b" ", now=1614265330)


@pytest.mark.usefixtures("worker")
async def test_valid_delivery_lands_and_a_repeated_id_lands_once(hook_client, db: psycopg.Connection) -> None:
    body = orjson.dumps({"order_id": "A-1", "title": "first order", "amount": 12.5})
    headers = signed_headers(body, webhook_id="msg_repeat")
    first = await hook_client.post("/webhooks/orders", content=body, headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 1 and first.json()["duplicate"] is False
    again = await hook_client.post("/webhooks/orders", content=body, headers=headers)
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "run_id": first.json()["run_id"], "duplicate": True}

    run = wait_for_run(db, first.json()["run_id"], timeout_s=60)
    assert (run["status"], run["trigger"], run["fetched"], run["inserted"]) == (RunStatus.SUCCEEDED, "webhook", 1, 1)
    assert records(db, "orders")["A-1"]["data"]["amount"] == 12.5
    assert stored(db)[0] == 1


@pytest.mark.parametrize(
    "tamper",
    ["body", "secret", "stale", "future", "missing-signature", "missing-id", "bad-timestamp"],
)
async def test_bad_deliveries_are_refused_and_store_nothing(hook_client, db: psycopg.Connection, tamper: str) -> None:
    body = orjson.dumps({"order_id": "X-1"})
    now = int(time.time())
    headers = signed_headers(
        body,
        secret="whsec_" + base64.b64encode(b"another-key").decode() if tamper == "secret" else SECRET,
        timestamp={"stale": now - 330, "future": now + 330}.get(tamper, now),  # well past the 5 min
    )
    if tamper == "body":
        body = orjson.dumps({"order_id": "X-2"})
    if tamper == "missing-signature":
        del headers["webhook-signature"]
    if tamper == "missing-id":
        del headers["webhook-id"]
    if tamper == "bad-timestamp":
        headers["webhook-timestamp"] = "soon"
    response = await hook_client.post("/webhooks/orders", content=body, headers=headers)
    assert_error(response, 401, "bad_signature")
    assert stored(db) == (0, 0)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


async def test_unknown_source_bad_json_and_missing_secret(hook_client, db: psycopg.Connection,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'{"order_id": 1}'
    assert_error(await hook_client.post("/webhooks/posts", content=body, headers=signed_headers(body)), 404)
    assert_error(await hook_client.post("/webhooks/nope", content=body, headers=signed_headers(body)), 404)
    broken = b'{"order_id": '
    assert_error(await hook_client.post("/webhooks/orders", content=broken, headers=signed_headers(broken)), 400)
    scalar = b"42"
    assert_error(await hook_client.post("/webhooks/orders", content=scalar, headers=signed_headers(scalar)), 422)
    monkeypatch.delenv("ORDERS_WEBHOOK_SECRET")
    error = assert_error(await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body)), 503)
    assert SECRET not in error["message"]
    assert stored(db) == (0, 0)


@pytest.mark.usefixtures("worker")
async def test_ten_thousand_records_arrive_in_chunks_and_land_whole(hook_client, db: psycopg.Connection) -> None:
    items = [{"order_id": f"B-{i}", "title": f"order {i}"} for i in range(10_000)]
    items[17] = "not an object"  # type: ignore[call-overload]
    body = orjson.dumps(items)
    response = await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text
    run = wait_for_run(db, response.json()["run_id"], timeout_s=120)
    assert (run["fetched"], run["inserted"], run["rejected"], run["status"]) == (10_000, 9_999, 1, RunStatus.PARTIAL)
    assert run["chunks_total"] == 10  # chunk_size 1000: ten tasks, not ten thousand
    assert len(records(db, "orders")) == 9_999
    reject = db.execute("SELECT reason, line_no FROM rejected_records WHERE run_id = %s", (run["id"],)).fetchone()
    assert reject == ("parse_error", 18)


@pytest.mark.usefixtures("worker")
async def test_a_burst_of_small_deliveries_is_batched(hook_client, db: psycopg.Connection) -> None:
    run_ids = set()
    for i in range(40):
        body = orjson.dumps({"order_id": f"C-{i}"})
        response = await hook_client.post("/webhooks/orders", content=body, headers=signed_headers(body))
        assert response.status_code == 202
        run_ids.add(response.json()["run_id"])
    finished = [wait_for_run(db, run_id, timeout_s=60) for run_id in sorted(run_ids)]
    assert sum(run["inserted"] for run in finished) == 40
    assert sum(run["chunks_total"] for run in finished) < 10  # batched per window, not one task per delivery
    assert len(records(db, "orders")) == 40
