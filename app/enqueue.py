"""The one place the API and the CLI hand work to the workers: by task name, so `app`
never imports `workers` internals."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

FETCH_TASK = "workers.tasks.fetch_source"


@lru_cache(maxsize=1)
def producer() -> Celery:
    """A Celery app used only to send messages (same config as the workers)."""
    app = Celery("ingest-producer")
    app.config_from_object("celeryconfig")
    return app


def enqueue_fetch(run_id: int) -> None:
    """Ask a worker to fetch the source of this run. Blocking: call from a thread in async code."""
    producer().send_task(FETCH_TASK, args=[run_id])
