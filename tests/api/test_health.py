"""GET /health: 200 when PostgreSQL and Redis answer, 503 naming the one that does not."""

from __future__ import annotations

from tests.api.conftest import assert_error

CLOSED = "127.0.0.1:1"


async def test_healthy(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_database_unreachable_is_503_naming_it(make_client):
    client = await make_client(database_url=f"postgresql://postgres@{CLOSED}/ingest")
    response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["database"] != "ok" and "1" in body["checks"]["database"]
    assert "Traceback" not in response.text


async def test_redis_unreachable_is_503_naming_it(make_client):
    client = await make_client(redis_url=f"redis://{CLOSED}/0")
    response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body == {"status": "degraded", "checks": {"database": "ok", "redis": body["checks"]["redis"]}}
    assert "connect" in body["checks"]["redis"].lower()
    # The rate limiter fails open without Redis; reads keep working.
    assert (await client.get("/data")).status_code == 200


async def test_health_is_get_only(client):
    assert_error(await client.post("/health"), 405, "method_not_allowed")
