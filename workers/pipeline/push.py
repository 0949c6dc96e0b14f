"""Push runs: close a webhook batching window and hand its records to the normal path.

The API stores each delivery as a raw chunk of an open run (committed before it answers
202, so nothing accepted is lost) without enqueueing anything. When the window closes,
this stage re-cuts the window's deliveries into chunks of `chunk_size` (a burst of small
deliveries becomes a few tasks, not one per record), sets chunks_total, and fans out
exactly like a fetch. From there, pushed records take the pulled records' path.

An id delivered more than once in a window keeps its delivery order: the later copies are
flagged repeats, as the fetch stage flags them (workers/pipeline/fetch/repeats.py), so the
chunk holding the last delivery wins whatever order the chunks commit in.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from app.core.raw_format import INSERT_RAW_CHUNK, REPEAT, RawRow, decode_rows, raw_chunk_params
from app.core.run_status import RunStatus
from app.core.sources_config import SourceConfig
from workers.pipeline.fetch.raw_digest import RowDigester
from workers.pipeline.finalize import finalize_run
from workers.sources.base import RawItem


def close_window(conn: psycopg.Connection, run_id: int, *, enqueue_chunk: Callable[[int, int], None]) -> int | None:
    """Close the window of a push run; return the number of chunks, or None if already closed."""
    with conn.transaction():
        row = conn.execute(
            "SELECT config FROM runs WHERE id = %s AND trigger = 'webhook' AND status = %s"
            " AND chunks_total IS NULL FOR UPDATE",
            (run_id, RunStatus.RUNNING),
        ).fetchone()
        if row is None:
            return None
        chunk_size = int(row[0].get("chunk_size", 1000))
        rows = []
        for (payload,) in conn.execute(
            "SELECT payload FROM raw_chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,)
        ):
            rows.extend(decode_rows(payload))
        conn.execute("DELETE FROM raw_chunks WHERE run_id = %s", (run_id,))
        _flag_repeats(rows, SourceConfig(**row[0]))
        chunks = [rows[i:i + chunk_size] for i in range(0, len(rows), chunk_size)]
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_RAW_CHUNK,
                [raw_chunk_params(run_id=run_id, chunk_no=n, rows=chunk) for n, chunk in enumerate(chunks)],
            )
        conn.execute(
            "UPDATE runs SET chunks_total = %s, heartbeat_at = now(), fetch_state = '{}'::jsonb WHERE id = %s",
            (len(chunks), run_id),
        )
    for chunk_no in range(len(chunks)):
        enqueue_chunk(run_id, chunk_no)
    if not chunks:
        finalize_run(conn, run_id)
    return len(chunks)


def _flag_repeats(rows: list[RawRow], source: SourceConfig) -> None:
    """Mark every row whose id an earlier row of the window holds (app/core/raw_format.py)."""
    key_of = RowDigester(source).key
    seen: set[str] = set()
    for row in rows:
        key = key_of(RawItem(row[1]))
        if key is None:
            continue
        if key in seen:
            row.extend([None] * (5 - len(row)))  # no digest: webhook rows have none
            row.append(REPEAT)
        else:
            seen.add(key)
