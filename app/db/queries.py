"""The reads that the API, the console, /metrics and the CLI share: one implementation each.

Async (SQLAlchemy on asyncpg): the CLI runs them through `asyncio.run` on a short-lived
engine, so a number printed by `python -m app.cli stats` is the number GET /stats shows.
Workers never import this module (they use psycopg; see the import contracts).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.progress import PROGRESS_COLUMNS, run_with_progress_to_api
from app.core.run_status import ACTIVE, ALL
from app.core.runs import RUN_COLUMNS, run_to_api
from app.db.session import Queryable, fetch


async def newest_rows(
    db: Queryable, *, table: str, columns: str, filters: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    """Rows of `table` matching every non-None filter (column = value), newest id first.

    `table`, `columns` and the filter names come from code, never from a request; the
    values are bound parameters.
    """
    given = {column: value for column, value in filters.items() if value is not None}
    where = " AND ".join(f"{column} = :{column}" for column in given) or "TRUE"
    sql = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY id DESC LIMIT :limit"
    return [dict(row) for row in (await db.execute(text(sql), {**given, "limit": limit})).mappings()]


async def list_runs(db: Queryable, *, source: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Runs in the contract's shape, newest first, optionally filtered."""
    filters = {"source": source, "status": status}
    rows = await newest_rows(db, table="runs", columns=RUN_COLUMNS, filters=filters, limit=limit)
    return [run_to_api(row) for row in rows]


async def get_run(db: Queryable, *, run_id: int) -> dict[str, Any] | None:
    """One run in the contract's shape with its `progress` (app/core/progress.py), or None.
    One statement: the ledger count is a subquery. The lists (list_runs, last_runs) leave
    progress out, so they cost no per-run count."""
    sql = f"SELECT {RUN_COLUMNS}, {PROGRESS_COLUMNS} FROM runs WHERE id = :id"
    found = (await db.execute(text(sql), {"id": run_id})).mappings().first()
    return run_with_progress_to_api(dict(found)) if found else None


async def active_runs_progress(db: Queryable, *, sources: list[str]) -> list[dict[str, Any]]:
    """The queued and running runs of these sources (at most one each), oldest first, with
    their `progress` (the console's "active runs")."""
    sql = f"""SELECT {RUN_COLUMNS}, {PROGRESS_COLUMNS} FROM runs
              WHERE source = ANY(:names) AND status = ANY(:active) ORDER BY id"""
    result = await db.execute(text(sql), {"names": sources, "active": list(ACTIVE)})
    return [run_with_progress_to_api(dict(row)) for row in result.mappings()]


async def last_runs(db: Queryable, *, sources: list[str]) -> dict[str, dict[str, Any]]:
    """The newest run of each named source (one index probe per source)."""
    if not sources:
        return {}
    sql = f"""
        SELECT r.* FROM unnest(CAST(:names AS text[])) AS s(name)
        CROSS JOIN LATERAL (
            SELECT {RUN_COLUMNS} FROM runs WHERE runs.source = s.name ORDER BY id DESC LIMIT 1
        ) AS r
    """
    result = await db.execute(text(sql), {"names": sources})
    return {row["source"]: run_to_api(dict(row)) for row in result.mappings()}


async def active_runs(db: Queryable, *, sources: list[str]) -> list[dict[str, Any]]:
    """Queued or running runs of these sources (raw rows)."""
    sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE source = ANY(:names) AND status = ANY(:active) ORDER BY id"
    result = await db.execute(text(sql), {"names": sources, "active": list(ACTIVE)})
    return [dict(row) for row in result.mappings()]


async def source_state(db: Queryable, *, names: list[str]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Checkpoint values and paused reasons of these sources."""
    checkpoints = await db.execute(
        text("SELECT source, value FROM checkpoints WHERE source = ANY(:names)"), {"names": names}
    )
    paused = await db.execute(
        text("SELECT name, paused_reason FROM sources WHERE name = ANY(:names)"), {"names": names}
    )
    return {row.source: row.value for row in checkpoints}, {row.name: row.paused_reason for row in paused}


# Everything the statistics read from PostgreSQL, in one round trip: the counts (per-source
# records in source order and rejects from the maintained source_stats, runs per status,
# drift events) and the newest run of every source named ($1, the configured sources, in
# configuration order) or counted (the others, in source order), one index probe each.
# One row per such source that has a run, in that order, each carrying the counts; a
# single row with no run columns when none has.
STATS_SQL = f"""
WITH counts AS (
  SELECT
    (SELECT coalesce(json_object_agg(source, records ORDER BY source), '{{}}') FROM source_stats) AS by_source,
    (SELECT coalesce(sum(rejected), 0)::bigint FROM source_stats) AS rejected_total,
    (SELECT coalesce(json_object_agg(status, n), '{{}}')
       FROM (SELECT status, count(*) AS n FROM runs GROUP BY status) AS s) AS by_status,
    (SELECT count(*) FROM drift_events) AS drift_total
), names AS (
  SELECT name, position FROM unnest($1::text[]) WITH ORDINALITY AS configured(name, position)
  UNION ALL
  SELECT source, cardinality($1::text[]) + row_number() OVER (ORDER BY source)
    FROM source_stats WHERE source <> ALL($1::text[])
)
SELECT counts.*, last.* FROM counts LEFT JOIN LATERAL (
  SELECT names.position, run.* FROM names CROSS JOIN LATERAL (
    SELECT {RUN_COLUMNS} FROM runs WHERE runs.source = names.name ORDER BY id DESC LIMIT 1
  ) AS run
) AS last ON true
ORDER BY last.position
"""


async def stats_snapshot(
    db: AsyncConnection, *, configured: list[str]
) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """(records, runs, rejected, drift events) in GET /stats' shape: records per source,
    runs per status (every status, zero when none) and the last run of each configured or
    counted source (timestamps left as datetimes, for orjson to render)."""
    rows = await fetch(db, STATS_SQL, configured)
    first = rows[0]
    by_source, by_status = (
        orjson.loads(v) if isinstance(v, str) else v for v in (first["by_source"], first["by_status"])
    )
    by_status = {**dict.fromkeys(ALL, 0), **by_status}
    last = {row["source"]: run_to_api(row, isoformat=False) for row in rows if row["id"] is not None}
    records = {"total": sum(by_source.values()), "by_source": by_source}
    runs = {"total": sum(by_status.values()), "by_status": by_status, "last_by_source": last}
    return records, runs, int(first["rejected_total"]), int(first["drift_total"])
