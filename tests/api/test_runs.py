"""POST /runs (keys, conflicts, idempotency), GET /runs, GET /runs/{id}."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

from app.api.routes import runs as runs_module
from app.core.run_status import RunStatus
from tests.api.conftest import AUTH, HASHED_KEY, PLAIN_KEY, assert_error, insert_run

RUN_KEYS = {"id", "source", "trigger", "status", "created_at", "started_at", "finished_at", "counts", "error"}


def run_count(db, source: str | None = None) -> int:
    if source is None:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]
    return db.execute("SELECT count(*) FROM runs WHERE source = %s", (source,)).fetchone()[0]


async def test_without_key_is_401(client, db):
    error = assert_error(await client.post("/runs", json={"sources": ["posts"]}), 401, "unauthorized")
    assert "X-API-Key" in error["message"]
    assert run_count(db) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": HASHED_KEY.upper()},
        {"Authorization": "Basic dGVzdC1rZXk6"},
        {"X-API-Key": "sha256:" + "0" * 64},
    ],
)
async def test_wrong_key_is_401(client, db, headers):
    response = await client.post("/runs", json={"sources": ["posts"]}, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert run_count(db) == 0


async def test_no_keys_configured_is_401_saying_so(make_client, db):
    client = await make_client(api_keys="")
    error = assert_error(await client.post("/runs", json={}, headers=AUTH), 401)
    assert "no API keys are configured" in error["message"]


@pytest.mark.parametrize(
    ("headers", "source"),
    [
        ({"X-API-Key": PLAIN_KEY}, "posts"),
        ({"Authorization": f"Bearer {PLAIN_KEY}"}, "news"),
        ({"X-API-Key": HASHED_KEY}, "passengers"),
        ({"Authorization": f"bearer {HASHED_KEY}"}, "posts"),
    ],
)
async def test_plain_and_hashed_keys_create_a_queued_run(idle_broker, client, db, headers, source):
    response = await client.post("/runs", json={"sources": [source]}, headers=headers)
    assert response.status_code == 202, response.text
    [run] = response.json()["runs"]
    assert set(run) == RUN_KEYS
    assert run["source"] == source and run["trigger"] == "api" and run["status"] == RunStatus.QUEUED
    assert run["counts"] == {"fetched": 0, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    row = db.execute("SELECT source, trigger, status, config->>'name' FROM runs WHERE id = %s", (run["id"],)).fetchone()
    assert row == (source, "api", RunStatus.QUEUED, source)


async def test_run_is_handed_to_the_fetch_queue(idle_broker, client, db):
    response = await client.post("/runs", json={"sources": ["posts"]}, headers=AUTH)
    assert response.status_code == 202
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    # No worker consumes during API tests: the message waits in kombu's list for "fetch".
    assert broker.llen("fetch") == 1
    assert str(response.json()["runs"][0]["id"]).encode() in broker.lindex("fetch", 0)


async def test_empty_body_runs_every_enabled_pulled_source(client, db):
    for body in ({}, None):
        db.execute("DELETE FROM runs")
        kwargs = {"json": body} if body is not None else {}
        response = await client.post("/runs", headers=AUTH, **kwargs)
        assert response.status_code == 202, response.text
        assert sorted(run["source"] for run in response.json()["runs"]) == ["news", "passengers", "posts"]


async def test_active_run_is_409_naming_it_and_nothing_is_created(client, db):
    busy = insert_run(db, "posts", RunStatus.RUNNING)
    error = assert_error(
        await client.post("/runs", json={"sources": ["news", "posts"]}, headers=AUTH), 409, "active_run"
    )
    assert f"active run {busy}" in error["message"] and "'posts'" in error["message"]
    assert run_count(db) == 1  # all or nothing: no run for news either
    queued = insert_run(db, "news", RunStatus.QUEUED)
    error = assert_error(await client.post("/runs", json={}, headers=AUTH), 409)
    assert str(busy) in error["message"] and str(queued) in error["message"]


async def test_finished_runs_do_not_block(client, db):
    insert_run(db, "posts", RunStatus.SUCCEEDED)
    insert_run(db, "posts", RunStatus.FAILED, error="boom")
    response = await client.post("/runs", json={"sources": ["posts"]}, headers=AUTH)
    assert response.status_code == 202


async def test_unknown_source_is_404(client, db):
    error = assert_error(
        await client.post("/runs", json={"sources": ["posts", "nope"]}, headers=AUTH), 404, "unknown_source"
    )
    assert "'nope'" in error["message"]
    assert run_count(db) == 0


async def test_webhook_source_cannot_be_run(client, db):
    error = assert_error(await client.post("/runs", json={"sources": ["orders"]}, headers=AUTH), 422)
    assert "webhook" in error["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"sources": []}, "body field 'sources'"),
        ({"sources": "posts"}, "body field 'sources'"),
        ({"sources": [1]}, "body field 'sources.0'"),
        ({"source": ["posts"]}, "body field 'source'"),
    ],
)
async def test_bad_body_is_422_naming_the_field(client, body, where):
    error = assert_error(await client.post("/runs", json=body, headers=AUTH), 422, "validation_error")
    assert where in error["message"]


async def test_invalid_json_is_422(client):
    response = await client.post("/runs", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(response, 422)["message"]


async def test_same_idempotency_key_twice_creates_one_run(client, db):
    headers = {**AUTH, "Idempotency-Key": "abc-123"}
    first = await client.post("/runs", json={"sources": ["posts"]}, headers=headers)
    second = await client.post("/runs", json={"sources": ["posts"]}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert run_count(db, "posts") == 1
    stored = db.execute("SELECT idempotency_key FROM runs").fetchone()[0]
    assert stored == "abc-123"
    # Without the key, the same request meets the active run.
    assert_error(await client.post("/runs", json={"sources": ["posts"]}, headers=AUTH), 409)


async def test_idempotency_key_with_a_different_body_is_refused(client, db):
    headers = {**AUTH, "Idempotency-Key": "key-1"}
    assert (await client.post("/runs", json={"sources": ["posts"]}, headers=headers)).status_code == 202
    error = assert_error(await client.post("/runs", json={"sources": ["news"]}, headers=headers), 422)
    assert error["code"] == "idempotency_key_reused"
    assert run_count(db, "news") == 0


async def test_idempotency_keys_are_scoped_per_api_key(client, db):
    first = await client.post("/runs", json={"sources": ["posts"]}, headers={**AUTH, "Idempotency-Key": "k"})
    assert first.status_code == 202
    other = await client.post(
        "/runs", json={"sources": ["posts"]}, headers={"X-API-Key": HASHED_KEY, "Idempotency-Key": "k"}
    )
    assert_error(other, 409)  # not a replay of another client's response


async def test_concurrent_requests_with_one_idempotency_key_create_one_run(client, db):
    headers = {**AUTH, "Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *(client.post("/runs", json={"sources": ["posts", "news"]}, headers=headers) for _ in range(5))
    )
    assert {response.status_code for response in responses} == {202}
    assert len({response.text for response in responses}) == 1
    assert run_count(db) == 2


async def test_failed_request_does_not_burn_the_idempotency_key(client, db):
    busy = insert_run(db, "posts", RunStatus.RUNNING)
    headers = {**AUTH, "Idempotency-Key": "retry-me"}
    assert_error(await client.post("/runs", json={"sources": ["posts"]}, headers=headers), 409)
    db.execute("UPDATE runs SET status = %s, finished_at = now() WHERE id = %s", (RunStatus.SUCCEEDED, busy))
    assert (await client.post("/runs", json={"sources": ["posts"]}, headers=headers)).status_code == 202


async def test_bad_idempotency_key_is_422(client):
    response = await client.post("/runs", json={}, headers={**AUTH, "Idempotency-Key": "x" * 300})
    assert "header 'Idempotency-Key'" in assert_error(response, 422)["message"]


async def test_broker_failure_is_503_and_marks_the_run_failed(client, db, monkeypatch):
    def broken(run_id: int) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(runs_module, "enqueue_fetch", broken)
    headers = {**AUTH, "Idempotency-Key": "broker"}
    error = assert_error(await client.post("/runs", json={"sources": ["posts"]}, headers=headers), 503)
    assert "broker" in error["message"]
    assert db.execute("SELECT status, error FROM runs").fetchone() == (
        RunStatus.FAILED,
        "could not enqueue: broker unavailable",
    )
    monkeypatch.undo()
    # The source is free again and the key was released.
    assert (await client.post("/runs", json={"sources": ["posts"]}, headers=headers)).status_code == 202


async def test_list_runs_newest_first_with_filters(client, db):
    ids = [
        insert_run(db, "posts", RunStatus.SUCCEEDED),
        insert_run(db, "news", RunStatus.FAILED),
        insert_run(db, "posts", RunStatus.QUEUED),
    ]
    body = (await client.get("/runs")).json()
    assert set(body) == {"runs"} and [run["id"] for run in body["runs"]] == ids[::-1]
    assert set(body["runs"][0]) == RUN_KEYS
    posts = (await client.get("/runs", params={"source": "posts"})).json()["runs"]
    assert [run["id"] for run in posts] == [ids[2], ids[0]]
    failed = (await client.get("/runs", params={"status": RunStatus.FAILED})).json()["runs"]
    assert [run["id"] for run in failed] == [ids[1]]
    assert len((await client.get("/runs", params={"limit": 1})).json()["runs"]) == 1
    assert "query parameter 'status'" in assert_error(await client.get("/runs?status=bogus"), 422)["message"]
    assert "query parameter 'limit'" in assert_error(await client.get("/runs?limit=501"), 422)["message"]
    assert_error(await client.get("/runs?limit=0"), 422)


async def test_get_one_run(client, db):
    run_id = insert_run(db, "posts", RunStatus.PARTIAL, fetched=3, inserted=1, updated=1, unchanged=0, rejected=1)
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == RunStatus.PARTIAL and run["finished_at"] is not None
    assert run["counts"] == {"fetched": 3, "inserted": 1, "updated": 1, "unchanged": 0, "rejected": 1}
    assert_error(await client.get("/runs/424242"), 404)
    assert_error(await client.get("/runs/abc"), 422)
