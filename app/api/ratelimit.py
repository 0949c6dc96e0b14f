"""Per-client rate limit in Redis: a fixed window whose tokens are leased in blocks.

The bucket is the API key when a valid one is presented, else the client IP; an
invalid key does not buy a fresh bucket. Every Redis key gets a TTL (the window), so
nothing accumulates. When Redis is unreachable the limiter fails open and logs:
an outage of the limiter must not take the read API down with it.

A round trip to Redis per request cost as much as a page query, so a process leases
tokens in blocks: one atomic Lua script grants min(block, limit - used) tokens of the
bucket's current window, and the process spends them locally until they run out or
the window ends. The block is 1% of the limit (at least 1), so:

- across processes the limit is never exceeded: every admitted request spends a token
  Redis granted for that window, and a lease never outlives its window (its end is
  reckoned from before the request to Redis was sent);
- at most block - 1 tokens per process go unspent, i.e. a client may get ~1% fewer;
- with one process, RateLimit-Remaining counts down exactly; with several, it is
  this process's view (tokens other processes hold are not yet counted as spent).

Once Redis has granted the whole window, the denial is remembered until the window
ends, so a client hammering past its limit costs no Redis calls either.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import match_api_key, presented_key
from app.api.errors import error_response
from app.settings import Settings

log = structlog.get_logger("app.api.ratelimit")

EXEMPT_PATHS = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

LEASE_FRACTION = 0.01
# Leases of buckets whose window ended are dropped once this many are held.
MAX_HELD_LEASES = 10_000

# KEYS[1] bucket; ARGV[1] window in ms, ARGV[2] limit, ARGV[3] block.
# Returns {tokens granted now, tokens granted in this window in all, ms until the window resets}.
_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.max(math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) - used), 0)
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {grant, used, ttl}
"""


def lease_block(limit: int) -> int:
    """Tokens leased per Redis call: 1% of the limit, at least 1."""
    return max(1, int(limit * LEASE_FRACTION))


@dataclass
class Lease:
    """Tokens of one bucket's window this process holds."""

    tokens: int  # granted to this process and not yet spent
    granted: int  # granted in the window to every process, as of the last grant
    ends_at: float  # time.monotonic() by which the window has surely ended in Redis


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
    """`limit` requests per `period_s` per bucket, tokens leased from Redis `block` at a time."""

    def __init__(
        self, redis: Redis, *, limit: int, period_s: int, prefix: str = "ratelimit:", block: int | None = None
    ):
        self.limit = limit
        self.period_ms = period_s * 1000
        self.prefix = prefix
        self.block = block or lease_block(limit)
        self._script = redis.register_script(_LUA)
        self._leases: dict[str, Lease] = {}

    async def hit(self, bucket: str) -> Decision:
        """Count one request against the bucket and decide."""
        lease = self._leases.get(bucket)
        spent = lease is not None and lease.tokens == 0 and lease.granted < self.limit
        if lease is None or spent or time.monotonic() >= lease.ends_at:
            lease = await self._lease(bucket)
        if lease.tokens == 0:  # the whole window is granted: denied until it ends
            return self._decision(lease, allowed=False)
        lease.tokens -= 1
        return self._decision(lease, allowed=True)

    async def _lease(self, bucket: str) -> Lease:
        """Ask Redis for up to one block of the window's tokens; merge them into what we hold."""
        asked_at = time.monotonic()
        grant, granted, ttl_ms = await self._script(
            keys=[self.prefix + bucket], args=[self.period_ms, self.limit, self.block]
        )
        ends_at = asked_at + max(int(ttl_ms), 0) / 1000
        held = self._leases.get(bucket)
        if held is not None and time.monotonic() < held.ends_at:
            # Another request of this process leased concurrently in the same window: keep both.
            held.tokens += int(grant)
            held.granted = max(held.granted, int(granted))
            held.ends_at = min(held.ends_at, ends_at)
            return held
        if len(self._leases) >= MAX_HELD_LEASES:
            self._drop_ended_leases()
        lease = self._leases[bucket] = Lease(tokens=int(grant), granted=int(granted), ends_at=ends_at)
        return lease

    def _drop_ended_leases(self) -> None:
        now = time.monotonic()
        for bucket in [bucket for bucket, lease in self._leases.items() if lease.ends_at <= now]:
            del self._leases[bucket]

    def _decision(self, lease: Lease, *, allowed: bool) -> Decision:
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(self.limit - lease.granted + lease.tokens, 0),
            reset_s=max(math.ceil(lease.ends_at - time.monotonic()), 1),
        )


def client_bucket(scope: Scope, settings: Settings) -> str:
    """The API key's fingerprint when valid, else the client IP."""
    presented = presented_key(Headers(scope=scope))
    fingerprint = match_api_key(settings.api_key_entries, presented) if presented else None
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
