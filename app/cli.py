"""`python -m app.cli`: migrate | run [SOURCE ...] [--wait] | runs | stats | sources | cancel RUN | resume |
reset --yes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.enqueue import enqueue_fetch
from app.core.progress import PROGRESS_COLUMNS, describe, run_progress
from app.core.run_end import RunNotCancellable, RunNotFound, cancel_run
from app.core.run_status import FINISHED, RunStatus
from app.core.runs import COUNT_KEYS, RUN_COLUMNS, ActiveRunExists, SourcePaused, create_run, run_to_api
from app.core.selection import SourceSelectionError, select_sources
from app.core.sources_config import SourceConfig, SourceConfigError, load_sources
from app.db import queries
from app.db.session import create_read_engine
from app.settings import Settings, get_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Data ingestion service: operator commands.")
console = Console()
err = Console(stderr=True)

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: say which variable is wrong
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _sources(settings: Settings) -> dict[str, SourceConfig]:
    try:
        return load_sources(settings.sources_file)
    except SourceConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _unreachable(settings: Settings, exc: Exception) -> typer.Exit:
    err.print(
        f"[red]cannot reach PostgreSQL at {settings.database_url.split('@')[-1]}:[/red] {exc}\n"
        "Start it (e.g. `docker compose up -d db`) or set DATABASE_URL; then run `python -m app.cli migrate`."
    )
    return typer.Exit(2)


def _connect(settings: Settings) -> psycopg.Connection:
    try:
        return psycopg.connect(settings.libpq_url, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise _unreachable(settings, exc) from None


def _read(settings: Settings, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run one of the API's read queries (app.db.queries) on a short-lived connection."""

    async def on_a_connection() -> T:
        engine = create_read_engine(settings, pool_size=1)
        try:
            async with engine.connect() as db:
                return await query(db)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(on_a_connection())
    except (DBAPIError, OSError) as exc:
        raise _unreachable(settings, exc) from None


@cli.command()
def migrate() -> None:
    """Create the database if it is missing, then apply every migration."""
    from app.db.migrate import migrate as run_migrations

    settings = _settings()
    try:
        run_migrations(settings)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach PostgreSQL:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"database [bold]{settings.database_name}[/bold] is at the latest migration")


@cli.command()
def run(
    sources: Annotated[list[str] | None, typer.Argument(help="Sources to run; none = every enabled one.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the runs until they finish.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 3600.0,
) -> None:
    """Start runs now. With --wait, exit 0 when every run ended succeeded/partial, 1 if any failed."""
    settings = _settings()
    configured = _sources(settings)
    try:
        selected = select_sources(configured, sources or None)
    except SourceSelectionError as exc:
        err.print(f"[red]{exc}[/red]; configured: {', '.join(configured)}")
        raise typer.Exit(2) from None
    run_ids: list[int] = []
    with _connect(settings) as conn:
        for source in selected:
            try:
                created = create_run(conn, source, "cli")
            except ActiveRunExists as exc:
                err.print(f"[yellow]{exc}[/yellow]")
                run_ids.append(int(exc.run["id"]))
                continue
            except SourcePaused as exc:
                err.print(f"[red]{exc}[/red]")
                raise typer.Exit(1) from None
            enqueue_fetch(created["id"])
            run_ids.append(int(created["id"]))
            console.print(f"run {created['id']} queued for [bold]{source.name}[/bold]")
        if wait and run_ids:
            final = _follow(conn, run_ids, timeout)
            failed = [r for r in final if r["status"] not in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)]
            if failed or len(final) < len(run_ids):
                raise typer.Exit(1)


_STATUS_STYLE = {
    RunStatus.SUCCEEDED: "green", RunStatus.PARTIAL: "yellow", RunStatus.FAILED: "red", RunStatus.CANCELLED: "magenta",
}


def _runs_table(runs: list[dict[str, Any]], title: str = "runs") -> Table:
    """Runs in the API's shape (run_to_api) as a table."""
    table = Table(title=title)
    for column in ("id", "source", "trigger", "status", *COUNT_KEYS, "created", "error"):
        table.add_column(column, overflow="fold")
    for r in runs:
        table.add_row(
            str(r["id"]), r["source"], r["trigger"], Text(r["status"], style=_STATUS_STYLE.get(r["status"], "")),
            *(str(r["counts"][k]) for k in COUNT_KEYS), r["created_at"][:19].replace("T", " "),
            Text((r["error"] or "")[:120]),  # Text: an error's brackets are not rich markup
        )
    return table


_FOLLOW_SQL = f"""
SELECT {RUN_COLUMNS}, {PROGRESS_COLUMNS},
       (SELECT coalesce(sum(fetched), 0) FROM chunk_ledger l WHERE l.run_id = runs.id) AS live_fetched
FROM runs WHERE id = ANY(%s) ORDER BY id
"""


def _progress_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="progress")
    for column in ("run", "source", "status", "progress", "records processed"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["id"]), r["source"], r["status"], describe(run_progress(r)), f"{r['live_fetched']:,}")
    return table


def _follow(conn: psycopg.Connection, run_ids: list[int], timeout: float) -> list[dict[str, Any]]:
    """Show live progress until every run is finished (or the timeout passes).

    On a terminal, a table redrawn in place; otherwise (a pipe, a CI log) one line per
    run each time its progress changes, since a redrawn table would leave nothing behind."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    shown: dict[int, str] = {}
    with Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else nullcontext() as live:
        while time.monotonic() < deadline:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(_FOLLOW_SQL, (run_ids,))
                rows = cur.fetchall()
            conn.commit()
            if live is not None:
                live.update(_progress_table(rows))
            else:
                for r in rows:
                    line = f"run {r['id']} {r['source']}: {describe(run_progress(r))}"
                    if shown.get(r["id"]) != line:
                        console.print(line, markup=False, highlight=False, soft_wrap=True)
                        shown[r["id"]] = line
            if all(r["status"] in FINISHED for r in rows):
                break
            time.sleep(0.5)
    finished = [r for r in rows if r["status"] in FINISHED]
    console.print(_runs_table([run_to_api(r) for r in rows], "result"))
    for r in finished:
        if r["status"] not in (RunStatus.SUCCEEDED, RunStatus.PARTIAL):
            err.print(_ended_badly(r), highlight=False)
    if len(finished) < len(run_ids):
        err.print(f"[red]timed out after {timeout:.0f}s with runs still active[/red]")
    return finished


def _ended_badly(run: dict[str, Any]) -> str:
    """Why a followed run did not succeed, in a sentence: its status, reason and what committed."""
    committed = f"{run['fetched']:,} records committed before it stopped ({describe(run_progress(run))})"
    if run["status"] == RunStatus.CANCELLED:
        return f"[yellow]run {run['id']} ({run['source']}) was cancelled[/yellow]: {committed}"
    reason = escape(run["error"] or "no reason recorded")  # an error's brackets are not rich markup
    return f"[red]run {run['id']} ({run['source']}) failed:[/red] {reason}; {committed}"


@cli.command()
def runs(
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """List recent runs, newest first."""
    settings = _settings()
    listed = _read(settings, lambda db: queries.list_runs(db, source=source, status=None, limit=limit))
    console.print(_runs_table(listed))


@cli.command()
def stats() -> None:
    """Records per source, runs by status, rejected and drift counts (as GET /stats reads them)."""
    settings = _settings()
    records, runs_, rejected, drift = _read(settings, lambda db: queries.stats_snapshot(db, configured=[]))
    table = Table(title="records")
    for column in ("source", "records"):
        table.add_column(column)
    for name, count in records["by_source"].items():
        table.add_row(name, str(count))
    table.add_row("[bold]total[/bold]", str(records["total"]))
    console.print(table)
    by_status = {status: n for status, n in runs_["by_status"].items() if n}
    console.print("runs by status: " + (", ".join(f"{s}={n}" for s, n in by_status.items()) or "none"))
    console.print(f"rejected records: {rejected}")
    console.print(f"drift events: {drift}")


@cli.command("sources")
def list_sources() -> None:
    """Configured sources with their checkpoint and last run."""
    settings = _settings()
    configured = _sources(settings)
    names = list(configured)

    async def state(db: AsyncConnection) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        checkpoints, _ = await queries.source_state(db, names=names)
        return checkpoints, await queries.last_runs(db, sources=names)

    checkpoints, last = _read(settings, state)
    table = Table(title=f"sources ({settings.sources_file})")
    for column in ("name", "kind", "schedule", "enabled", "checkpoint", "last run"):
        table.add_column(column)
    for s in configured.values():
        run_info = last.get(s.name)
        table.add_row(
            s.name, s.kind, s.schedule if s.is_pulled else "push", "yes" if s.enabled else "no",
            "" if checkpoints.get(s.name) is None else str(checkpoints[s.name]),
            f"{run_info['id']} {run_info['status']}" if run_info else "never",
        )
    console.print(table)


@cli.command()
def cancel(run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run to cancel.")]) -> None:
    """Stop a queued or running run at its next chunk boundary (status cancelled, checkpoint kept)."""
    settings = _settings()
    with _connect(settings) as conn:
        try:
            ended = cancel_run(conn, run_id)
        except (RunNotFound, RunNotCancellable) as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    console.print(_runs_table([run_to_api(ended)], "cancelled"))


@cli.command()
def resume(source: Annotated[str, typer.Argument(help="The paused source.")]) -> None:
    """Re-enable a source that schema drift paused (on_drift = "pause")."""
    settings = _settings()
    with _connect(settings) as conn:
        row = conn.execute(
            "UPDATE sources SET paused_reason = NULL, updated_at = now() WHERE name = %s"
            " AND paused_reason IS NOT NULL RETURNING name",
            (source,),
        ).fetchone()
        conn.commit()
    if row is None:
        err.print(f"source '{source}' is not paused")
        raise typer.Exit(1)
    console.print(f"source [bold]{source}[/bold] resumed")


@cli.command()
def reset(yes: Annotated[bool, typer.Option("--yes", help="Confirm deleting all ingested data.")] = False) -> None:
    """Delete every record, run, rejection, drift event and checkpoint (the schema stays)."""
    if not yes:
        err.print("refusing to reset without --yes (this deletes all ingested data)")
        raise typer.Exit(2)
    settings = _settings()
    with _connect(settings) as conn:
        conn.execute(
            "TRUNCATE records, runs, raw_chunks, fetch_kept_ids, chunk_ledger, rejected_records, checkpoints,"
            " source_stats, schema_fields, drift_events, idempotency_keys, webhook_deliveries RESTART IDENTITY"
        )
        conn.commit()
    console.print(f"database [bold]{settings.database_name}[/bold] reset")


if __name__ == "__main__":
    cli()
