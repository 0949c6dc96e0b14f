"""The one place the API and the CLI hand work to the workers: by task name, so `app`
never imports `workers` internals."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

FETCH_TASK = "workers.tasks.fetch_source"
CLOSE_PUSH_TASK = "workers.tasks.close_push_run"


@lru_cache(maxsize=1)
def producer() -> Celery:
    """A Celery app used only to send messages (same config as the workers)."""
    app = Celery("ingest-producer")
    app.config_from_object("celeryconfig")
    return app


def enqueue_fetch(run_id: int) -> None:
    """Ask a worker to fetch the source of this run. Blocking: call from a thread in async code."""
    producer().send_task(FETCH_TASK, args=[run_id])


def enqueue_close_push(run_id: int, after_s: float) -> None:
    """Close a webhook batching window after `after_s` seconds (far below the visibility timeout).

    One attempt, no retries: the deliveries are committed already, and the reconciler closes
    a window whose message was never sent, so a broker outage must not hold up the answer."""
    producer().send_task(CLOSE_PUSH_TASK, args=[run_id], countdown=after_s, retry=False)
