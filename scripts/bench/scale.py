"""The long-source benchmark: a 10M-row CSV end to end, uninterrupted and with the whole
worker SIGKILLed halfway through its fetch (issue 15: sources of any size and duration).

Both loads run with the defaults users run (fetch segments, TASK_TIMEOUT_S, worker
concurrency), after the 1M-row repeats, so that their ratios to the 1M-row first load
(records/s, worker peak RSS) are measured side by side in one run. The killed load needs
beat (the reconciler re-drives the dead worker's fetch and chunks); beat runs for both
loads, so that they differ only by the kill.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from bench import stack

KILL_AT = 0.5  # of the file's bytes read by the fetch


@dataclass
class ScaleResult:
    rows: int
    seconds: float
    peak_worker_mib: float | None
    killed_seconds: float | None = None
    killed_at_fraction: float | None = None
    segments: int | None = None
    fetch_attempts: int | None = None
    killed_segments: int | None = None
    killed_fetch_attempts: int | None = None
    table_mib: float | None = None
    raw_mib: float | None = None
    file_mib: float | None = None


def fetch_fraction(client: httpx.Client, run_id: int) -> float:
    progress = client.get(f"/runs/{run_id}").json().get("progress") or {}
    return float(progress.get("fraction_read") or 0.0)


def kill_at_half(client: httpx.Client, run_id: int, worker: stack.Process, restart: Callable[[], None]) -> float:
    """SIGKILL the worker's process group once the fetch read KILL_AT of the file, start a
    new one at once; the fraction read when it died."""
    while True:
        fraction = fetch_fraction(client, run_id)
        if fraction >= KILL_AT:
            break
        worker.check_alive()
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait()
    restart()
    return fraction


def sizes_mib(url: str) -> tuple[float, float]:
    """The records table (with its indexes and TOAST) and the raw chunks, in MiB."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size('records'), pg_total_relation_size('raw_chunks')"
        ).fetchone()
    assert row is not None
    return row[0] / 2**20, row[1] / 2**20


def run_info(url: str, run_id: int) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT fetch_segments, fetch_attempts FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return {"segments": row[0], "fetch_attempts": row[1]}
