"""Creating runs: the one rule every trigger (beat, API, CLI, webhook) goes through.

The partial unique index `runs_one_active_per_source` lets at most one queued/running
run exist per source; a second attempt gets ActiveRunExists naming the run it met.
The API runs the same SQL on its async session (app/api/run_creation.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from app.core.run_status import ACTIVE
from app.core.sources_config import SourceConfig

INSERT_RUN_SQL = """
INSERT INTO runs (source, trigger, config, idempotency_key)
SELECT %(source)s, %(trigger)s, %(config)s::jsonb, %(idempotency_key)s
WHERE NOT EXISTS (SELECT 1 FROM sources WHERE name = %(source)s AND paused_reason IS NOT NULL)
RETURNING *
"""

PAUSED_REASON_SQL = "SELECT paused_reason FROM sources WHERE name = %(source)s"

ACTIVE_RUN_SQL = "SELECT * FROM runs WHERE source = %(source)s AND status = ANY(%(active)s)"


def active_run_params(source: SourceConfig) -> dict[str, Any]:
    """The parameters of ACTIVE_RUN_SQL."""
    return {"source": source.name, "active": list(ACTIVE)}

RUN_COLUMNS = (
    "id, source, trigger, status, created_at, started_at, finished_at, "
    "fetched, inserted, updated, unchanged, rejected, error"
)


class SourcePaused(Exception):
    """The source was paused (on_drift = "pause") and waits for `python -m app.cli resume`."""

    def __init__(self, source: str, reason: str | None):
        super().__init__(f"source '{source}' is paused: {reason}; resume it with `python -m app.cli resume {source}`")
        self.source = source
        self.reason = reason


class ActiveRunExists(Exception):
    """The source already has a queued or running run."""

    def __init__(self, run: dict[str, Any]):
        super().__init__(f"source '{run['source']}' already has an active run {run['id']} ({run['status']})")
        self.run = run


def run_params(source: SourceConfig, trigger: str, idempotency_key: str | None = None) -> dict[str, Any]:
    return {
        "source": source.name,
        "trigger": trigger,
        "config": orjson.dumps(source.snapshot()).decode(),
        "idempotency_key": idempotency_key,
    }


def create_run(
    conn: psycopg.Connection, source: SourceConfig, trigger: str, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Insert a queued run and commit; raise ActiveRunExists if the source is busy."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(INSERT_RUN_SQL, run_params(source, trigger, idempotency_key))
            run = cur.fetchone()
            if run is None:
                cur.execute(PAUSED_REASON_SQL, {"source": source.name})
                paused = cur.fetchone()
                conn.rollback()
                raise SourcePaused(source.name, paused["paused_reason"] if paused else None)
            conn.commit()
        except psycopg.errors.UniqueViolation:
            conn.rollback()
            cur.execute(ACTIVE_RUN_SQL, active_run_params(source))
            active = cur.fetchone()
            conn.rollback()
            if active is None:  # finished between our insert and our look: rare, retry once
                return create_run(conn, source, trigger, idempotency_key)
            raise ActiveRunExists(active) from None
    assert run is not None
    return run


COUNT_KEYS = ("fetched", "inserted", "updated", "unchanged", "rejected")


def run_to_api(run: Mapping[str, Any], *, isoformat: bool = True) -> dict[str, Any]:
    """The contract's run shape (CONTRACT section 4), from a `runs` row. Timestamps as ISO
    text, or left as datetimes (`isoformat=False`) for a caller that renders with orjson."""

    def when(value: Any) -> Any:
        return value.isoformat() if isoformat and value is not None else value

    return {
        "id": run["id"],
        "source": run["source"],
        "trigger": run["trigger"],
        "status": run["status"],
        "created_at": when(run["created_at"]),
        "started_at": when(run["started_at"]),
        "finished_at": when(run["finished_at"]),
        "counts": {key: run[key] for key in COUNT_KEYS},
        "error": run["error"],
    }
