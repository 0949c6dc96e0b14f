"""The Celery app: `celery -A workers worker|beat|flower`.

Configuration comes from celeryconfig.py; the beat schedule is built from sources.toml,
so a bad sources file stops every process at start-up with one clear message.
"""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from app.core.logs import configure_logging
from app.core.sources_config import SourceConfigError, load_sources
from app.settings import get_settings
from workers.schedule import build_beat_schedule

app = Celery("workers", include=["workers.tasks"])
app.config_from_object("celeryconfig")
_settings = get_settings()

try:
    _sources = load_sources(_settings.sources_file)
except SourceConfigError as exc:
    sys.stderr.write(f"configuration error: {exc}\n")
    raise SystemExit(2) from None

app.conf.beat_schedule = build_beat_schedule(_sources, _settings)


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    configure_logging(_settings)


@worker_process_init.connect
def _fresh_connection(**_: object) -> None:
    from workers import db

    db.reset()


celery = app
