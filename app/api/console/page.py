"""GET /: every source, its last runs as a chart, active runs and their progress, queues,
recent failures, and run-now.

Everything is rendered on the server (Jinja2, inline SVG chart), so the page reads with
JavaScript off. The only script (static/console.js) sends POST /runs with a key the
operator types; the key is never stored in the page, a cookie or local storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import text

from app.api.deps import ReadConnectionDep, SettingsDep, SourcesDep
from app.core.progress import Stage, describe
from app.core.run_status import RunStatus
from app.db.queries import active_runs_progress, source_state, stats_snapshot
from app.db.session import Queryable
from app.observability.queue_depth import queue_depths
from celeryconfig import QUEUES

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

RUNS_PER_CHART = 20
CHART_WIDTH, CHART_HEIGHT = 200, 40


async def recent_runs(db: Queryable, *, names: list[str], per_source: int) -> dict[str, list[dict[str, Any]]]:
    """The last `per_source` runs of each source, oldest first (for the chart)."""
    sql = """
        SELECT r.* FROM unnest(CAST(:names AS text[])) AS s(name)
        CROSS JOIN LATERAL (
            SELECT id, source, status, fetched, inserted, updated, unchanged, rejected FROM runs
            WHERE runs.source = s.name ORDER BY id DESC LIMIT :n
        ) AS r
    """
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for row in (await db.execute(text(sql), {"names": names, "n": per_source})).mappings():
        result[row["source"]].insert(0, dict(row))
    return result


async def troubled_runs(db: Queryable, *, limit: int = 10) -> list[dict[str, Any]]:
    """The most recent failed or partial runs, with their errors."""
    sql = """SELECT id, source, status, finished_at, fetched, rejected, error FROM runs
             WHERE status = ANY(:troubled) ORDER BY id DESC LIMIT :limit"""
    troubled = [RunStatus.FAILED.value, RunStatus.PARTIAL.value]
    return [dict(row) for row in (await db.execute(text(sql), {"limit": limit, "troubled": troubled})).mappings()]


def bar_chart(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SVG bars: height = records fetched by the run, colour = its status."""
    if not runs:
        return []
    tallest = max(max(run["fetched"] for run in runs), 1)
    width = CHART_WIDTH / RUNS_PER_CHART
    return [
        {
            "x": round(i * width, 1),
            "width": round(width - 2, 1),
            "height": max(1.0, round(CHART_HEIGHT * run["fetched"] / tallest, 1)),
            "status": run["status"],
            "label": f"run {run['id']}: {run['status']}, {run['fetched']} fetched, {run['inserted']} new, "
                     f"{run['updated']} updated, {run['rejected']} rejected",
        }
        for i, run in enumerate(runs)
    ]


def progress_bar(progress: dict[str, Any]) -> float | None:
    """How full a run's bar is (0..1): the bytes read while it fetches (when the source
    tells its size), the chunks committed once the whole source is read; None for an
    indeterminate bar."""
    if progress["stage"] == Stage.FETCHING:
        return progress["fraction_read"]
    if progress["stage"] == Stage.NORMALIZING and progress["chunks_total"]:
        return progress["chunks_committed"] / progress["chunks_total"]
    return None


async def active_runs(db: Queryable, *, names: list[str]) -> list[dict[str, Any]]:
    """Queued and running runs, each with its progress in words (the CLI's) and its bar."""
    return [
        {**run, "progress_text": describe(run["progress"]), "bar": progress_bar(run["progress"])}
        for run in await active_runs_progress(db, sources=names)
    ]


@router.get("/", response_class=HTMLResponse)
async def console(request: Request, db: ReadConnectionDep, settings: SettingsDep, sources: SourcesDep) -> HTMLResponse:
    names = list(sources)
    records, runs, rejected, drift_events = await stats_snapshot(db, configured=names)
    by_source, last = records["by_source"], runs["last_by_source"]
    checkpoints, paused = await source_state(db, names=names)
    history = await recent_runs(db, names=names, per_source=RUNS_PER_CHART)
    context = {
        "sources": [
            {
                "config": source,
                "records": by_source.get(source.name, 0),
                "checkpoint": checkpoints.get(source.name),
                "paused": paused.get(source.name),
                "last": last.get(source.name),
                "bars": bar_chart(history[source.name]),
            }
            for source in sources.values()
        ],
        "total_records": sum(by_source.values()),
        "rejected": rejected,
        "drift_events": drift_events,
        "by_status": runs["by_status"],
        "active": await active_runs(db, names=names),
        "troubled": await troubled_runs(db),
        "queues": await queue_depths(
            broker_url=settings.celery_broker_url,
            broker_redis=request.app.state.broker_redis,
            queues=QUEUES,
        ),
        "flower_url": settings.flower_url,
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT},
    }
    return templates.TemplateResponse(request, "console.html", context)
