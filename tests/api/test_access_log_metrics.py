"""The request-context middleware's per-request work: one access log line (when INFO is
enabled for app.access) and the HTTP metrics, whose label children it keeps."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY


def access_lines(caplog) -> list[dict]:
    return [record.msg for record in caplog.records if record.name == "app.access"]


async def test_one_access_line_per_request_at_info_and_none_above(client, db, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    response = await client.get("/data", params={"page_size": 0}, headers={"X-Request-ID": "req-4711"})
    assert response.status_code == 422
    (line,) = access_lines(caplog)
    assert line["event"] == "request" and line["request_id"] == "req-4711"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/data", 422)
    assert line["latency_ms"] >= 0
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="app.access")
    assert (await client.get("/data")).status_code == 200
    assert access_lines(caplog) == []


def requests_total(status: str, route: str = "/data") -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


def latency_count(route: str = "/data") -> float:
    return REGISTRY.get_sample_value("http_request_duration_seconds_count", {"method": "GET", "route": route}) or 0.0


async def test_http_metrics_count_every_request_by_route_and_status(client, db):
    ok, invalid, latencies = requests_total("200"), requests_total("422"), latency_count()
    unmatched = requests_total("404", route="unmatched")
    for _ in range(3):
        assert (await client.get("/data")).status_code == 200
    assert (await client.get("/data", params={"page": 0})).status_code == 422
    assert (await client.get("/no-such-route")).status_code == 404
    assert requests_total("200") == ok + 3
    assert requests_total("422") == invalid + 1
    assert latency_count() == latencies + 4
    assert requests_total("404", route="unmatched") == unmatched + 1
