"""A run's progress: where its fetch is, for people watching (GET /runs/{id}, `app.cli run
--wait`, the console). One builder, so the three never disagree.

The fetch stage writes `runs.fetch_progress` with each chunk and heartbeat
(workers/pipeline/fetch/buffer.py: `chunks`, `segments`, `restarts`, `done`, and what
the connector's Boundary markers report: `pages`, `items`, `bytes_read`, `bytes_total`),
`runs.fetch_segments` as segments end and `runs.chunks_total` once the whole source is
read; each committed chunk leaves a `chunk_ledger` row. A run read with PROGRESS_COLUMNS
carries all of it, and `run_progress` turns it into the API's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import orjson

from app.core.run_status import RunStatus
from app.core.runs import run_to_api


class Stage(StrEnum):
    """Where a run is, as a person would say it."""

    QUEUED = "queued"  # waiting for a worker
    FETCHING = "fetching"  # reading the source (or, for a webhook window, receiving deliveries)
    NORMALIZING = "normalizing"  # the source is read; its chunks are being committed
    FINISHED = "finished"  # succeeded, partial, failed or cancelled


# Added to a SELECT on `runs` (not aliased): the columns run_progress reads. The ledger
# count is a scalar subquery on chunk_ledger's primary key (run_id, chunk_no), an index-only
# count of this run's rows, so it stays one statement and one round trip.
PROGRESS_COLUMNS = (
    "fetch_progress, fetch_segments, chunks_total,"
    " (SELECT count(*) FROM chunk_ledger WHERE chunk_ledger.run_id = runs.id) AS chunks_committed"
)


def _count(value: Any) -> int | None:
    """A non-negative whole number from the stored JSON, or None when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def stage_of(status: str, chunks_total: int | None) -> Stage:
    if status == RunStatus.QUEUED:
        return Stage.QUEUED
    if status == RunStatus.RUNNING:
        return Stage.FETCHING if chunks_total is None else Stage.NORMALIZING
    return Stage.FINISHED


def run_progress(run: Mapping[str, Any]) -> dict[str, Any]:
    """The `progress` object of GET /runs/{id}, from a runs row read with PROGRESS_COLUMNS."""
    stored = run["fetch_progress"]
    if isinstance(stored, str | bytes):  # asyncpg hands jsonb to text() queries as text
        stored = orjson.loads(stored)
    fetch: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
    chunks_total = run["chunks_total"]
    bytes_read, bytes_total = _count(fetch.get("bytes_read")), _count(fetch.get("bytes_total"))
    fraction = None
    if bytes_read is not None and bytes_total:
        # A file that grew while it was read may pass its first size: never show past 100%.
        fraction = round(min(bytes_read / bytes_total, 1.0), 4)
    return {
        "stage": stage_of(run["status"], chunks_total).value,
        # fetch_progress counts the segment in flight; fetch_segments only those that ended.
        "segments": max(run["fetch_segments"] or 0, _count(fetch.get("segments")) or 0),
        "pages": _count(fetch.get("pages")),
        "items_read": _count(fetch.get("items")),
        "bytes_read": bytes_read,
        "bytes_total": bytes_total,
        "fraction_read": fraction,
        "chunks_stored": chunks_total if chunks_total is not None else _count(fetch.get("chunks")) or 0,
        "chunks_committed": int(run["chunks_committed"]),
        "chunks_total": chunks_total,
        "restarts": _count(fetch.get("restarts")) or 0,
    }


def run_with_progress_to_api(run: Mapping[str, Any]) -> dict[str, Any]:
    """GET /runs/{id}'s shape: the run (run_to_api) and its `progress`."""
    return {**run_to_api(run), "progress": run_progress(run)}


def human_bytes(n: int) -> str:
    """812000000 -> '812 MB' (decimal units, as file managers and HTTP sizes show them)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def describe(progress: Mapping[str, Any]) -> str:
    """One line for people, e.g. 'fetching: 37% of 812 MB, 3 segments, 120/120 chunks committed'
    (the CLI's live view and the console say the same words)."""
    stage = progress["stage"]
    if stage == Stage.QUEUED:
        return "queued: waiting for a worker"
    read: list[str] = []
    if progress["fraction_read"] is not None and stage == Stage.FETCHING:
        read.append(f"{progress['fraction_read']:.0%} of {human_bytes(progress['bytes_total'])}")
    elif progress["bytes_read"] is not None:
        read.append(f"{human_bytes(progress['bytes_read'])} read")
    if progress["pages"] is not None:
        read.append(_plural(progress["pages"], "page"))
    if progress["items_read"] is not None:
        read.append(f"{progress['items_read']:,} items read")
    if progress["segments"]:
        read.append(_plural(progress["segments"], "segment"))
    total = progress["chunks_total"]
    if total is None:
        read.append(f"{_plural(progress['chunks_stored'], 'chunk')} stored, {progress['chunks_committed']:,} committed")
    else:
        read.append(f"{progress['chunks_committed']:,}/{total:,} chunks committed")
    if progress["restarts"]:
        read.append(_plural(progress["restarts"], "restart"))  # the source changed under the fetch
    return f"{stage}: " + ", ".join(read)
