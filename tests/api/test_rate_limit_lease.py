"""The rate limiter leases tokens from Redis in blocks (1% of the limit): never more
than the limit across processes, exact headers for one process, a fresh window after
the old one ends. Real Redis (the test database), two limiters standing for two
processes."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from redis.asyncio import Redis

from app.api.ratelimit import RateLimiter, lease_block


@pytest.fixture
async def redis_client():
    client = Redis.from_url(os.environ["REDIS_URL"])
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"ratelimit-test:{uuid.uuid4().hex}:"


def test_block_is_one_percent_of_the_limit_and_at_least_one():
    assert [lease_block(limit) for limit in (1, 3, 99, 100, 600, 1_000_000)] == [1, 1, 1, 1, 6, 10_000]


async def test_two_processes_never_admit_more_than_the_limit(redis_client, prefix):
    first, second = (RateLimiter(redis_client, limit=1000, period_s=60, prefix=prefix) for _ in range(2))
    assert first.block == 10
    allowed = 0
    for i in range(1500):
        decision = await (first if i % 3 else second).hit("ip:1")  # uneven share of the traffic
        allowed += decision.allowed
    assert allowed <= 1000
    assert allowed >= 1000 - 2 * (first.block - 1)  # at most block - 1 unspent per process
    assert int(await redis_client.get(prefix + "ip:1")) == 1000


async def test_concurrent_hits_in_one_process_respect_the_limit(redis_client, prefix):
    limiter = RateLimiter(redis_client, limit=500, period_s=60, prefix=prefix)
    decisions = []
    for _ in range(8):  # in bursts the Redis client's connection pool can take
        decisions += await asyncio.gather(*(limiter.hit("ip:2") for _ in range(100)))
    assert 500 - (limiter.block - 1) <= sum(d.allowed for d in decisions) <= 500


async def test_tokens_are_spent_locally_between_leases(redis_client, prefix):
    limiter = RateLimiter(redis_client, limit=1000, period_s=60, prefix=prefix)
    for _ in range(10):
        assert (await limiter.hit("key:a")).allowed
    assert await redis_client.get(prefix + "key:a") == b"10"  # one lease of 10 served all ten
    await limiter.hit("key:a")
    assert await redis_client.get(prefix + "key:a") == b"20"
    assert 0 < await redis_client.pttl(prefix + "key:a") <= 60_000


async def test_one_process_headers_count_down_exactly(redis_client, prefix):
    limiter = RateLimiter(redis_client, limit=300, period_s=60, prefix=prefix)
    assert limiter.block == 3
    remaining = [(await limiter.hit("ip:3")).remaining for _ in range(300)]
    assert remaining == list(range(299, -1, -1))
    denied = await limiter.hit("ip:3")
    assert not denied.allowed and denied.remaining == 0
    assert 1 <= denied.reset_s <= 60 and denied.headers()["Retry-After"] == str(denied.reset_s)


async def test_denial_is_remembered_until_the_window_ends(redis_client, prefix):
    limiter = RateLimiter(redis_client, limit=2, period_s=60, prefix=prefix)
    assert [(await limiter.hit("ip:4")).allowed for _ in range(3)] == [True, True, False]
    await redis_client.delete(prefix + "ip:4")  # Redis would now grant again...
    assert not (await limiter.hit("ip:4")).allowed  # ...but this window is over for the client
    assert await redis_client.get(prefix + "ip:4") is None


async def test_a_new_window_grants_again(redis_client, prefix):
    first, second = (RateLimiter(redis_client, limit=200, period_s=1, prefix=prefix) for _ in range(2))
    admitted = [(await (first if i % 2 else second).hit("ip:5")).allowed for i in range(250)]
    assert 198 <= sum(admitted) <= 200 and not admitted[-1]
    await asyncio.sleep(1.1)
    assert (await first.hit("ip:5")).allowed and (await second.hit("ip:5")).allowed
    assert int(await redis_client.get(prefix + "ip:5")) == 2 * first.block


async def test_leases_of_ended_windows_are_dropped(redis_client, prefix, monkeypatch):
    monkeypatch.setattr("app.api.ratelimit.MAX_HELD_LEASES", 5)
    limiter = RateLimiter(redis_client, limit=10, period_s=1, prefix=prefix)
    for n in range(5):
        await limiter.hit(f"ip:old-{n}")
    await asyncio.sleep(1.1)
    await limiter.hit("ip:new")
    assert set(limiter._leases) == {"ip:new"}


async def test_redis_down_fails_open(make_client, db):
    client = await make_client(redis_url="redis://127.0.0.1:1/0", rate_limit="1/minute")
    for _ in range(3):
        response = await client.get("/data")
        assert response.status_code == 200 and "ratelimit-limit" not in response.headers
