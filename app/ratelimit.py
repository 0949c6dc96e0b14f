"""Per-client rate limit in Redis: one atomic Lua script per request (fixed window).

The bucket is the API key when a valid one is presented, else the client IP; an
invalid key does not buy a fresh bucket. Every Redis key gets a TTL (the window), so
nothing accumulates. When Redis is unreachable the limiter fails open and logs:
an outage of the limiter must not take the read API down with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import match_api_key, presented_key
from app.errors import error_response
from app.settings import Settings

log = structlog.get_logger("app.ratelimit")

EXEMPT_PATHS = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

# KEYS[1] bucket; ARGV[1] window in ms. Returns {count in window, ms until the window resets}.
_LUA = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


class RateLimiter:
    """`limit` requests per `period_s` per bucket."""

    def __init__(self, redis: Redis, *, limit: int, period_s: int, prefix: str = "ratelimit:"):
        self.limit = limit
        self.period_ms = period_s * 1000
        self.prefix = prefix
        self._script = redis.register_script(_LUA)

    async def hit(self, bucket: str) -> Decision:
        """Count one request against the bucket and decide."""
        count, ttl_ms = await self._script(keys=[self.prefix + bucket], args=[self.period_ms])
        count, ttl_ms = int(count), max(int(ttl_ms), 0)
        return Decision(
            allowed=count <= self.limit,
            limit=self.limit,
            remaining=max(self.limit - count, 0),
            reset_s=max(math.ceil(ttl_ms / 1000), 1),
        )


def client_bucket(scope: Scope, settings: Settings) -> str:
    """The API key's fingerprint when valid, else the client IP."""
    fingerprint = match_api_key(settings.api_key_entries, presented_key(Headers(scope=scope)))
    if fingerprint:
        return f"key:{fingerprint}"
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"


class RateLimitMiddleware:
    """Adds RateLimit-* headers to every limited response; answers 429 over the limit."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.limit, self.period_s = settings.rate_limit_parsed
        self._limiter: RateLimiter | None = None
        self._limiter_redis: Redis | None = None

    def _limiter_for(self, scope: Scope) -> RateLimiter | None:
        redis = getattr(scope["app"].state, "redis", None)
        if redis is None:
            return None
        if self._limiter is None or self._limiter_redis is not redis:
            self._limiter = RateLimiter(redis, limit=self.limit, period_s=self.period_s)
            self._limiter_redis = redis
        return self._limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        limiter = self._limiter_for(scope)
        decision: Decision | None = None
        if limiter is not None:
            try:
                decision = await limiter.hit(client_bucket(scope, self.settings))
            except (RedisError, OSError) as exc:
                log.warning("rate_limit_unavailable", error=f"{type(exc).__name__}: {exc}")
        if decision is None:
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            response = error_response(
                scope,
                429,
                f"rate limit of {self.settings.rate_limit} exceeded; retry in {decision.reset_s}s",
                headers=decision.headers(),
            )
            await response(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
