"""How many messages wait in each Celery queue, read straight from the broker.

kombu's Redis transport keeps a queue as a Redis list named after the queue, plus one
list per priority step named f"{queue}\\x06\\x16{n}". The depth is the sum of their
lengths, summed per queue inside Redis by one registered Lua script (EVALSHA): one
command and one small reply, where a pipeline of ten LLENs per queue cost /stats more
Python (packing and parsing thirty replies) than its SQL. Messages a worker has taken
but not acknowledged are not waiting, so they are not counted. For an AMQP broker the depth comes from a
passive queue declare in a worker thread; anything the broker cannot say is None.
"""

from __future__ import annotations

import functools
import weakref

import anyio
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

log = structlog.get_logger("app.observability.queue_depth")

PRIORITY_SEP = "\x06\x16"
PRIORITY_LEVELS = range(1, 10)
AMQP_TIMEOUT_S = 3.0


def redis_list_names(queue: str) -> list[str]:
    """Every Redis list kombu may use for this queue."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{n}" for n in PRIORITY_LEVELS]


# KEYS: every list of every queue, queue after queue; ARGV[1]: lists per queue.
# Returns one sum per queue, in order. LLEN of a missing list is 0.
_SUM_LISTS_LUA = """
local per_queue = tonumber(ARGV[1])
local sums = {}
for first = 1, #KEYS, per_queue do
  local depth = 0
  for i = first, first + per_queue - 1 do
    depth = depth + redis.call('LLEN', KEYS[i])
  end
  sums[#sums + 1] = depth
end
return sums
"""

# One registered script per client: redis-py sends EVALSHA, and loads the script again
# by itself if Redis lost it (a restart, SCRIPT FLUSH).
_scripts: weakref.WeakKeyDictionary[Redis, AsyncScript] = weakref.WeakKeyDictionary()


def _sum_lists_script(redis: Redis) -> AsyncScript:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_SUM_LISTS_LUA)
    return script


@functools.lru_cache(maxsize=16)
def _list_keys(queues: tuple[str, ...]) -> list[bytes]:
    """The script's KEYS for these queues, encoded once."""
    return [name.encode() for queue in queues for name in redis_list_names(queue)]


async def redis_queue_depths(redis: Redis, *, queues: tuple[str, ...]) -> dict[str, int | None]:
    """Depth of each queue from a Redis broker; None for every queue if Redis fails."""
    try:
        sums = await _sum_lists_script(redis)(keys=_list_keys(queues), args=[len(PRIORITY_LEVELS) + 1])
    except (RedisError, OSError) as exc:
        log.warning("queue_depth_unavailable", error=f"{type(exc).__name__}: {exc}")
        return {queue: None for queue in queues}
    return {queue: int(depth) for queue, depth in zip(queues, sums, strict=True)}


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
