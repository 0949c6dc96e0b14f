"""Queue depth from a Redis broker (app/observability/queue_depth.py): one Lua script sums kombu's lists
per queue, the plain list and its nine priority lists."""

from __future__ import annotations

import os

import pytest
from redis.asyncio import Redis

from app.observability.queue_depth import PRIORITY_SEP, redis_list_names, redis_queue_depths

# Queue names no worker consumes: a test worker on this Redis database would take (and choke
# on) the junk items pushed here if they sat in its real queues.
FETCH, NORMALIZE, MAINTENANCE = "depth-test-fetch", "depth-test-normalize", "depth-test-maintenance"
QUEUES = (FETCH, NORMALIZE, MAINTENANCE)


@pytest.fixture
async def broker(db) -> Redis:  # `db` empties the test Redis database first
    redis = Redis.from_url(os.environ["REDIS_URL"])
    yield redis
    await redis.aclose()


async def test_depth_is_the_sum_of_the_queue_list_and_its_priority_lists(broker):
    await broker.rpush(FETCH, "a", "b")
    await broker.rpush(f"{FETCH}{PRIORITY_SEP}3", "c")
    await broker.rpush(f"{FETCH}{PRIORITY_SEP}9", "d", "e", "f")
    await broker.rpush(f"{MAINTENANCE}{PRIORITY_SEP}1", "g")
    await broker.rpush("unrelated", "h")
    await broker.rpush(f"{FETCH}{PRIORITY_SEP}10", "not a kombu priority step")
    assert await redis_queue_depths(broker, queues=QUEUES) == {FETCH: 6, NORMALIZE: 0, MAINTENANCE: 1}
    assert await redis_queue_depths(broker, queues=(MAINTENANCE, FETCH)) == {MAINTENANCE: 1, FETCH: 6}
    await broker.delete(*redis_list_names(FETCH))
    assert await redis_queue_depths(broker, queues=QUEUES) == {FETCH: 0, NORMALIZE: 0, MAINTENANCE: 1}


async def test_depth_is_none_for_every_queue_when_redis_errs(broker):
    await broker.set(NORMALIZE, "not a list")  # LLEN fails inside the script
    assert await redis_queue_depths(broker, queues=QUEUES) == dict.fromkeys(QUEUES)
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    assert await redis_queue_depths(unreachable, queues=QUEUES) == dict.fromkeys(QUEUES)
    await unreachable.aclose()
