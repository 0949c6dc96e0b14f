"""Helpers for end-to-end pipeline tests: start a run the way the API does, wait for it."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from app.core.enqueue import enqueue_fetch
from app.core.run_status import FINISHED
from app.core.runs import create_run
from app.core.sources_config import SourceConfig


def source(name: str, kind: str, url: str, **config: Any) -> SourceConfig:
    if kind != "rss":
        config.setdefault("id_field", "id")
    return SourceConfig(name=name, kind=kind, url=url, **config)  # type: ignore[arg-type]


def get_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def wait_for_run(conn: psycopg.Connection, run_id: int, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = get_run(conn, run_id)
        if run["status"] in FINISHED:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {get_run(conn, run_id)['status']} after {timeout_s}s")


def start_run(conn: psycopg.Connection, config: SourceConfig, trigger: str = "api") -> int:
    with psycopg.connect(conn.info.dsn) as own:  # create_run commits on its own connection
        run = create_run(own, config, trigger)
    enqueue_fetch(run["id"])
    return int(run["id"])


def ingest(conn: psycopg.Connection, config: SourceConfig, timeout_s: float = 90) -> dict[str, Any]:
    """Run a source to completion through the real worker and return the finished run."""
    run = wait_for_run(conn, start_run(conn, config), timeout_s)
    counts = [run[k] for k in ("inserted", "updated", "unchanged", "rejected")]
    assert run["fetched"] == sum(counts), f"count invariant broken: {run}"
    return run


def records(conn: psycopg.Connection, source_name: str) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM records WHERE source = %s", (source_name,))
        return {row["external_id"]: row for row in cur.fetchall()}


def rejects(conn: psycopg.Connection, run_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM rejected_records WHERE run_id = %s ORDER BY line_no NULLS LAST, id", (run_id,))
        return cur.fetchall()


def checkpoint(conn: psycopg.Connection, source_name: str) -> Any:
    row = conn.execute("SELECT value FROM checkpoints WHERE source = %s", (source_name,)).fetchone()
    return row[0] if row else None
