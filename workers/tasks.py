"""Celery tasks: ids in, one pipeline stage, a retry decision out. Nothing else lives here."""

from __future__ import annotations

import uuid

import psycopg
import structlog
from celery import Task
from kombu.exceptions import OperationalError as BrokerError

from app.core.enqueue import enqueue_fetch
from app.core.runs import ActiveRunExists, SourcePaused, create_run
from app.core.selection import runnable
from app.core.sources_config import load_sources
from app.settings import get_settings
from workers import db, liveness
from workers.celery import app
from workers.pipeline.fetch.segment import SegmentBudget
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.finalize import fail_run
from workers.pipeline.normalize.stage import process_chunk, record_failure, start_attempt
from workers.pipeline.push import close_window
from workers.pipeline.reconcile import reconcile_stalled
from workers.pipeline.retention import delete_expired_chunks

log = structlog.get_logger(__name__)
settings = get_settings()


def _backoff_s(retries: int) -> float:
    """Retry delay: short, growing, and far below the visibility timeout."""
    return float(min(60, 2**retries))


def _bind(task: Task, **context: object) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task.request.id, **context)


def enqueue_chunk(run_id: int, chunk_no: int) -> None:
    normalize_and_upsert.apply_async((run_id, chunk_no))


@app.task(bind=True, name="workers.tasks.fetch_source", max_retries=None)
def fetch_source(self: Task, run_id: int, lease: str | None = None) -> dict[str, object] | None:
    """Stream one segment of the run's source into raw chunks, fan out one normalize task
    per chunk, and hand on to a continuation task when the source goes on (fetch/segment.py)."""
    _bind(self, run_id=run_id)
    # The lease this task claims; a retry of this task (below) presents it again, so that the
    # lease it still holds (it could not release it: the database was gone) is its own.
    token = uuid.UUID(lease) if lease else uuid.uuid4()
    try:
        outcome = fetch_run(
            db.connection(),
            run_id,
            enqueue_chunk=enqueue_chunk,
            max_attempts=settings.max_task_attempts,
            budget=SegmentBudget(seconds=settings.segment_budget_s, chunks=settings.fetch_segment_chunks),
            enqueue_continuation=lambda run: fetch_source.apply_async((run,)),
            timeout_s=settings.task_timeout_s,
            holder=liveness.process_id(),
            lease_token=token,
        )
    except psycopg.OperationalError as exc:  # database unreachable or restarted: try again later
        db.reset()
        log.warning("fetch_retry", error=str(exc))
        raise self.retry(
            exc=exc, countdown=_backoff_s(self.request.retries), args=(run_id,), kwargs={"lease": str(token)}
        ) from None
    except BrokerError as exc:
        # The broker went away while chunks were being handed on. Stored chunks are safe
        # in PostgreSQL; the reconciler re-drives this fetch once its heartbeat is older
        # than TASK_TIMEOUT_S, and the re-driven fetch re-sends what is not committed.
        log.warning("fetch_broker_unavailable", error=str(exc))
        return None
    except Exception as exc:  # a bug or an unexpected upstream shape: fail visibly, do not loop
        log.exception("fetch_crashed")
        fail_run(db.connection(), run_id, f"fetch crashed: {type(exc).__name__}: {exc}")
        return None
    if outcome is None:
        return None
    return {"chunks": outcome.chunks, "status": outcome.status, "continued": outcome.continued}


@app.task(bind=True, name="workers.tasks.normalize_and_upsert", max_retries=None)
def normalize_and_upsert(self: Task, run_id: int, chunk_no: int) -> dict[str, object] | None:
    """Normalize one stored chunk and upsert it with its ledger row in one transaction."""
    _bind(self, run_id=run_id, chunk_no=chunk_no)
    try:
        conn = db.connection()
        if not start_attempt(conn, run_id, chunk_no, settings.max_task_attempts, holder=liveness.process_id()):
            return None
        outcome = process_chunk(conn, run_id, chunk_no)
    except Exception as exc:  # deadlock, serialization failure, DB restart, poison data...
        log.warning("chunk_retry", error=f"{type(exc).__name__}: {exc}", retries=self.request.retries)
        try:
            record_failure(db.connection(), run_id, chunk_no, f"{type(exc).__name__}: {exc}")
        except psycopg.Error:
            db.reset()
        raise self.retry(exc=exc, countdown=_backoff_s(self.request.retries)) from None
    if outcome.counts is None:
        return None
    return {"counts": outcome.counts.__dict__, "run_status": outcome.run_status}


@app.task(bind=True, name="workers.tasks.close_push_run", max_retries=None)
def close_push_run(self: Task, run_id: int) -> int | None:
    """Close a webhook batching window: re-cut its deliveries into chunks and fan them out."""
    _bind(self, run_id=run_id)
    try:
        return close_window(db.connection(), run_id, enqueue_chunk=enqueue_chunk)
    except psycopg.OperationalError as exc:
        db.reset()
        raise self.retry(exc=exc, countdown=_backoff_s(self.request.retries)) from None


@app.task(bind=True, name="workers.tasks.start_scheduled_run")
def start_scheduled_run(self: Task, source_name: str) -> int | None:
    """Beat's entry point: create a run for the source unless one is already active."""
    _bind(self, source=source_name)
    source = {s.name: s for s in runnable(load_sources(settings.sources_file))}.get(source_name)
    if source is None:
        log.info("scheduled_run_skipped", reason="source removed or disabled")
        return None
    try:
        run = create_run(db.connection(), source, "schedule")
    except (ActiveRunExists, SourcePaused) as exc:
        log.info("scheduled_run_skipped", reason=str(exc))
        return None
    enqueue_fetch(run["id"])
    return int(run["id"])


@app.task(bind=True, name="workers.tasks.reconcile")
def reconcile(self: Task) -> dict[str, object]:
    """Re-drive runs and chunks that stalled past TASK_TIMEOUT_S; finalize complete runs."""
    _bind(self)
    report = reconcile_stalled(
        db.connection(),
        timeout_s=settings.task_timeout_s,
        max_attempts=settings.max_task_attempts,
        enqueue_fetch=lambda run_id: fetch_source.apply_async((run_id,)),
        enqueue_chunk=enqueue_chunk,
        enqueue_close_push=lambda run_id: close_push_run.apply_async((run_id,)),
    )
    return report.__dict__


@app.task(bind=True, name="workers.tasks.prune_raw_chunks")
def prune_raw_chunks(self: Task) -> dict[str, object]:
    """Delete raw chunks of runs finished more than RAW_RETENTION_DAYS ago, in small batches."""
    _bind(self)
    report = delete_expired_chunks(db.connection(), retention_days=settings.raw_retention_days)
    if report.chunks:
        log.info("raw_chunks_pruned", runs=report.runs, chunks=report.chunks)
    return report.__dict__
