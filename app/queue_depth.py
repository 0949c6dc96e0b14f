"""How many messages wait in each Celery queue, read straight from the broker.

kombu's Redis transport keeps a queue as a Redis list named after the queue, plus one
list per priority step named f"{queue}\\x06\\x16{n}". The depth is the sum of their
lengths, read in one pipeline. Messages a worker has taken but not acknowledged are
not waiting, so they are not counted. For an AMQP broker the depth comes from a
passive queue declare in a worker thread; anything the broker cannot say is None.
"""

from __future__ import annotations

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("app.queue_depth")

PRIORITY_SEP = "\x06\x16"
PRIORITY_LEVELS = range(1, 10)
AMQP_TIMEOUT_S = 3.0


def redis_list_names(queue: str) -> list[str]:
    """Every Redis list kombu may use for this queue."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{n}" for n in PRIORITY_LEVELS]


async def redis_queue_depths(redis: Redis, *, queues: tuple[str, ...]) -> dict[str, int | None]:
    """Depth of each queue from a Redis broker; None for every queue if Redis fails."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in redis_list_names(queue):
                    pipe.llen(name)
            lengths = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("queue_depth_unavailable", error=f"{type(exc).__name__}: {exc}")
        return {queue: None for queue in queues}
    per_queue = len(PRIORITY_LEVELS) + 1
    return {queue: int(sum(lengths[i * per_queue : (i + 1) * per_queue])) for i, queue in enumerate(queues)}


def _amqp_depths_blocking(url: str, queues: tuple[str, ...]) -> dict[str, int | None]:
    from kombu import Connection

    depths: dict[str, int | None] = {queue: None for queue in queues}
    with Connection(url, connect_timeout=AMQP_TIMEOUT_S) as conn:
        channel = conn.channel()
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception:  # a missing queue closes the channel: open a fresh one
                channel = conn.channel()
    return depths


async def amqp_queue_depths(url: str, *, queues: tuple[str, ...]) -> dict[str, int | None]:
    """Depth of each queue from an AMQP broker (blocking client, run in a thread)."""
    try:
        with anyio.fail_after(AMQP_TIMEOUT_S * 2):
            return await anyio.to_thread.run_sync(_amqp_depths_blocking, url, queues, abandon_on_cancel=True)
    except Exception as exc:
        log.warning("queue_depth_unavailable", error=f"{type(exc).__name__}: {exc}")
        return {queue: None for queue in queues}


def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "unix")


async def queue_depths(
    *, broker_url: str, broker_redis: Redis | None, queues: tuple[str, ...]
) -> dict[str, int | None]:
    """Depth per queue for whichever broker is configured."""
    if broker_redis is not None:
        return await redis_queue_depths(broker_redis, queues=queues)
    if broker_url.split("://", 1)[0].startswith(("amqp", "pyamqp")):
        return await amqp_queue_depths(broker_url, queues=queues)
    return {queue: None for queue in queues}
