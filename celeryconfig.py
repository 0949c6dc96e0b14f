"""Celery configuration, shared by the workers, beat, Flower and the API's producer.

Redis delivers at least once and sometimes twice; correctness comes from idempotent
writes in PostgreSQL (see docs/reliability.md). These settings make redelivery happen
when it should (a killed worker) and never when it should not (a long task).
"""

import os

from kombu import Queue

from app.settings import get_settings

_settings = get_settings()

FETCH_QUEUE = "fetch"
NORMALIZE_QUEUE = "normalize"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (FETCH_QUEUE, NORMALIZE_QUEUE, MAINTENANCE_QUEUE)

broker_url = _settings.celery_broker_url
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True

# JSON only: no pickle from the network.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# At-least-once: ack after the work, redeliver when the worker process dies mid-task.
# A DB attempt counter (raw_chunks.attempts, runs.fetch_attempts) stops poison loops.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# One pool process per core, plus one: a run's fetch stage is a single long task that reads
# and parses while the chunks it fans out are normalised, and with only one process per
# core it took a core's process away from normalising for half of a large first load
# (docs/benchmarks.md). `celery worker -c N` overrides this.
worker_concurrency = (os.cpu_count() or 1) + 1
task_track_started = True
task_send_sent_event = True
worker_send_task_events = True

# Time limits below the visibility timeout, so a redelivery never races a live task.
task_time_limit = _settings.task_timeout_s
task_soft_time_limit = max(5, int(_settings.task_timeout_s * 0.9))
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    "socket_timeout": 30,
    "socket_connect_timeout": 10,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
result_expires = 3600
task_ignore_result = True

task_queues = tuple(Queue(name) for name in QUEUES)
task_default_queue = MAINTENANCE_QUEUE
task_routes = {
    "workers.tasks.fetch_source": {"queue": FETCH_QUEUE},
    "workers.tasks.normalize_and_upsert": {"queue": NORMALIZE_QUEUE},
    "workers.tasks.close_push_run": {"queue": NORMALIZE_QUEUE},
    "workers.tasks.start_scheduled_run": {"queue": MAINTENANCE_QUEUE},
    "workers.tasks.reconcile": {"queue": MAINTENANCE_QUEUE},
    "workers.tasks.prune_raw_chunks": {"queue": MAINTENANCE_QUEUE},
}

worker_hijack_root_logger = False
worker_max_memory_per_child = 300_000  # KiB: recycle a pool child that grew past ~300 MB
timezone = "UTC"
enable_utc = True

# The beat schedule (one entry per enabled source, plus the reconciler) is built from
# sources.toml when beat starts: see workers/schedule.py.
