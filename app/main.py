"""The HTTP API: `uvicorn app.main:app`. create_app() builds it; the lifespan opens the
database pools (one for reads, one for writes) and one Redis client per process and
closes them on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.api.console import page as console_page
from app.api.errors import install_exception_handlers
from app.api.gc_tuning import tune_after_startup
from app.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.api.ratelimit import RateLimitMiddleware
from app.api.responses import OrjsonResponse
from app.api.routes import data, drift, health, metrics, rejects, runs, sources, stats, webhooks
from app.core.logs import configure_logging
from app.core.sources_config import load_sources
from app.db.session import create_engine, create_read_engine, create_sessionmaker
from app.observability.queue_depth import is_redis_url
from app.settings import Settings, get_settings

REDIS_TIMEOUT_S = 2.0
CONSOLE_STATIC = Path(__file__).parent / "api" / "console" / "static"

DESCRIPTION = """
Read the unified records ingested from every configured source, start runs, and watch
the pipeline. Errors always have the shape `{"error": {"code", "message", "request_id"}}`;
every response carries `X-Request-ID`. Write endpoints need an API key
(`X-API-Key` or `Authorization: Bearer`). Requests are rate limited per key (or client IP);
limited responses carry `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
"""


def _redis(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # A bad sources file stops the API at start-up with the loader's one-line message.
    app.state.sources = await anyio.to_thread.run_sync(load_sources, settings.sources_file)
    engine, read_engine = create_engine(settings), create_read_engine(settings)
    redis = _redis(settings.redis_url)
    broker_url = settings.celery_broker_url
    if broker_url == settings.redis_url:
        broker_redis: Redis | None = redis
    else:
        broker_redis = _redis(broker_url) if is_redis_url(broker_url) else None
    app.state.engine, app.state.sessionmaker = engine, create_sessionmaker(engine)
    app.state.read_engine = read_engine
    app.state.redis, app.state.broker_redis = redis, broker_redis
    if getattr(app.state, "tune_gc", False):
        tune_after_startup()
    try:
        yield
    finally:
        if broker_redis is not None and broker_redis is not redis:
            await broker_redis.aclose()
        await redis.aclose()
        await read_engine.dispose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; tests pass their own Settings."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Ingest API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    install_exception_handlers(app)
    for module in (health, data, runs, sources, stats, rejects, drift, webhooks, metrics, console_page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=CONSOLE_STATIC), name="static")
    # Added innermost first: the request context wraps everything, so every response
    # (429 and 413 included) carries the request id and the security headers.
    app.add_middleware(BodyLimitMiddleware, larger_limits={"/webhooks/": settings.webhook_max_body_bytes})
    app.add_middleware(RateLimitMiddleware, settings=settings)
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware)
    if settings.trusted_proxies:
        # Outermost: everything inside (logs, rate limit buckets) sees the client the trusted
        # proxy names. uvicorn's own handling is off (--no-proxy-headers, docs/operations.md):
        # by default it trusts X-Forwarded-For from loopback, which any local client can forge.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


def _module_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    app = create_app(settings)
    app.state.tune_gc = True  # the served process only (see app/api/gc_tuning.py)
    return app


app = _module_app()
