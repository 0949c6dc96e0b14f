"""The beat schedule: one entry per enabled pulled source, plus the reconciler and raw-chunk retention."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab, schedule

from app.core.selection import runnable
from app.core.sources_config import SourceConfig
from app.settings import Settings

PRUNE_EVERY_S = 3600.0


def reconcile_interval_s(settings: Settings) -> float:
    """Often enough to re-drive a dead worker's work within seconds (workers/liveness.py),
    and stalled work soon after TASK_TIMEOUT_S."""
    return max(5.0, min(15.0, settings.task_timeout_s / 4))


def build_beat_schedule(sources: dict[str, SourceConfig], settings: Settings) -> dict[str, Any]:
    entries: dict[str, Any] = {
        "reconcile": {
            "task": "workers.tasks.reconcile",
            "schedule": schedule(reconcile_interval_s(settings)),
            "options": {"expires": reconcile_interval_s(settings)},
        },
        "prune_raw_chunks": {
            "task": "workers.tasks.prune_raw_chunks",
            "schedule": schedule(PRUNE_EVERY_S),
            "options": {"expires": PRUNE_EVERY_S},
        },
    }
    for source in runnable(sources):
        parsed = source.parsed_schedule
        when = schedule(parsed.every) if parsed.every else crontab(*parsed.cron)  # type: ignore[misc]
        entries[f"source:{source.name}"] = {
            "task": "workers.tasks.start_scheduled_run",
            "schedule": when,
            "args": [source.name],
        }
    return entries
