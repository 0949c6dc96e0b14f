"""GET /metrics: Prometheus text format: the HTTP metrics the middleware records, plus the
ingestion metrics read from PostgreSQL and the broker at scrape time (app/observability/ingest_metrics.py)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response

from app.observability.ingest_metrics import IngestCollector, RegistryView, read_snapshot
from celeryconfig import QUEUES

router = APIRouter(tags=["operations"])

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests served by the API", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _registry() -> CollectorRegistry:
    # Several uvicorn worker processes: aggregate through prometheus' multiprocess mode.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: HTTP metrics and ingestion metrics (see docs/operations.md)."""
    state = request.app.state
    snapshot = await read_snapshot(
        state.sessionmaker,
        broker_url=state.settings.celery_broker_url,
        broker_redis=state.broker_redis,
        queues=QUEUES,
    )
    registry = CollectorRegistry(auto_describe=False)  # one per scrape, never shared
    registry.register(RegistryView(_registry()))
    registry.register(IngestCollector(snapshot))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
