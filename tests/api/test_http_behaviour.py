"""Cross-cutting HTTP behaviour: request ids, the error envelope, rate limits, body
limit, security headers, CORS, OpenAPI, metrics, and secrets never leaking."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
import redis

from app.core.run_status import RunStatus
from app.main import create_app
from app.settings import Settings
from tests.api.conftest import AUTH, assert_error, insert_run

SECRET = os.environ["TEST_SOURCE_TOKEN"]


async def test_request_id_is_echoed_when_valid(client):
    for rid in ("abc-123", "A.b_c-9", "x" * 128):
        response = await client.get("/health", headers={"X-Request-ID": rid})
        assert response.headers["x-request-id"] == rid


@pytest.mark.parametrize("rid", ["", "has space", "x" * 129, "semi;colon", "ünïcode"])
async def test_request_id_is_generated_when_missing_or_invalid(client, rid):
    headers = {"X-Request-ID": rid.encode("utf-8")} if rid else {}
    response = await client.get("/data", headers=headers)
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json()["meta"]["request_id"] == generated


async def test_error_envelope_for_unknown_route_405_and_422(client):
    assert "/nope" in assert_error(await client.get("/nope"), 404, "not_found")["message"]
    response = await client.put("/data")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"
    response = await client.delete("/runs")
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, POST"  # both routes on the path, not just the first
    assert_error(await client.get("/data", params={"page_size": "many"}), 422, "validation_error")
    error = assert_error(await client.get("/data", headers={"X-Request-ID": "given-id"}, params={"page": 0}), 422)
    assert error["request_id"] == "given-id"


async def test_unhandled_exception_is_a_500_envelope_without_details(db):
    app = create_app(Settings(rate_limit="1000/minute"))

    async def boom() -> None:
        raise RuntimeError("internal detail /etc/passwd")

    app.add_api_route("/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            response = await client.get("/boom", headers={"X-Request-ID": "err-1"})
    error = assert_error(response, 500, "internal_error")
    assert error["request_id"] == "err-1"
    assert "detail" not in response.text and "RuntimeError" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_rate_limit_answers_429_with_headers(make_client, db):
    client = await make_client(rate_limit="3/minute")
    remaining = []
    for _ in range(3):
        response = await client.get("/data")
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "3"
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == [2, 1, 0]
    limited = await client.get("/data")
    error = assert_error(limited, 429, "rate_limited")
    assert "3/minute" in error["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["ratelimit-remaining"] == "0"
    assert_error(await client.get("/nope"), 429)  # unknown routes count too
    # Exempt paths still answer.
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    # Every bucket in Redis expires.
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = broker.keys("ratelimit:*")
    assert keys and all(0 < broker.pttl(key) <= 60_000 for key in keys)


async def test_rate_limit_buckets_per_valid_key_not_per_invalid_key(make_client, db):
    client = await make_client(rate_limit="2/minute")
    for _ in range(2):
        assert (await client.get("/runs")).status_code == 200
    assert_error(await client.get("/runs"), 429)
    # A wrong key does not buy a fresh bucket: it counts against the client IP.
    assert_error(await client.get("/runs", headers={"X-API-Key": "made-up"}), 429)
    # A valid key has its own bucket.
    response = await client.get("/runs", headers=AUTH)
    assert response.status_code == 200 and response.headers["ratelimit-remaining"] == "1"


async def test_body_over_the_limit_is_413(client, db):
    big = b'{"sources": ["' + b"x" * (1024 * 1024) + b'"]}'
    response = await client.post("/runs", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert "exceeds" in assert_error(response, 413, "payload_too_large")["message"]

    async def chunks():  # no Content-Length: the limit counts the bytes as they arrive
        yield b'{"sources": ["'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"]}'

    response = await client.post("/runs", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    # A small chunked body still goes through.

    async def small():
        yield b'{"sources": '
        yield b'["posts"]}'

    response = await client.post("/runs", content=small(), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 202, response.text


async def test_security_headers_and_csp(client):
    response = await client.get("/data")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    csp = docs.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in csp and "frame-ancestors 'none'" in csp


async def test_cors_closed_by_default_and_open_when_configured(make_client, db):
    closed = await make_client()
    response = await closed.get("/data", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    opened = await make_client(cors_origins="https://app.example")
    preflight = await opened.options(
        "/runs",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = await opened.get("/data", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_openapi_documents_every_endpoint_and_error(client):
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ("/health", "/data", "/data/{id}", "/runs", "/runs/{id}", "/sources", "/stats", "/rejects", "/drift"):
        assert path in paths, path
    error_ref = "#/components/schemas/ErrorResponse"
    data_get = paths["/data"]["get"]["responses"]
    for code in ("200", "400", "422", "429", "500"):
        assert code in data_get
    assert data_get["422"]["content"]["application/json"]["schema"]["$ref"] == error_ref
    post = paths["/runs"]["post"]
    assert {"202", "401", "404", "409", "413", "422", "429"} <= set(post["responses"])
    assert post["security"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "examples" in spec["components"]["schemas"]["Record"]


async def test_metrics_in_prometheus_format(client):
    await client.get("/data")
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'http_requests_total{method="GET",route="/data",status="200"}' in response.text


async def test_secret_values_never_appear_in_responses(make_client, db, tmp_path: Path):
    sources_file = tmp_path / "sources.toml"
    sources_file.write_text(
        """
[sources.secretive]
kind = "http_json"
url = "https://api.example/items?token=${TEST_SOURCE_TOKEN}"
id_field = "id"
headers = { Authorization = "Bearer ${TEST_SOURCE_TOKEN}", X-Extra = "${TEST_SOURCE_TOKEN}" }
"""
    )
    client = await make_client(sources_file=str(sources_file))
    created = await client.post("/runs", json={"sources": ["secretive"]}, headers=AUTH)
    assert created.status_code == 202
    insert_run(db, "secretive", RunStatus.FAILED, error="upstream said no")
    responses = [created]
    for path in (
        "/sources",
        "/runs",
        f"/runs/{created.json()['runs'][0]['id']}",
        "/stats",
        "/data",
        "/rejects",
        "/drift",
        "/health",
        "/openapi.json",
        "/metrics",
        "/nope",
    ):
        responses.append(await client.get(path))
    responses.append(await client.post("/runs", json={"sources": ["secretive"]}, headers=AUTH))  # 409
    for response in responses:
        assert SECRET not in response.text, response.request.url
        assert all(SECRET not in value for value in response.headers.values())
    assert "Authorization" not in (await client.get("/sources")).text
