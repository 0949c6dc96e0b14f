"""Time a CSV first load stage by stage, in one process, and count what each chunk sends.

    python scripts/bench/first_load_stages.py --rows 100000 --repeats 5

No Celery, no API: a run is created, fetched (`fetch_run`, chunks stored) and then every
chunk is normalised and upserted in order (`normalize_and_upsert`), on one connection,
into a dedicated database (ingest_stages, emptied before each repeat). The source is the
benchmark's Titanic-format CSV with the shipped `passengers` settings. What it reports,
medians of the repeats: the wall-clock time of the fetch stage, of the chunk stage (all
chunks) and of both; the CPU time this process and its PostgreSQL backend spent in each
(from /proc: the server must run on this machine); and the statements (cursor executions
and COPYs) the chunk stage sent per chunk. Use it to compare two versions of the pipeline
on the same machine: on a busy machine the CPU times move much less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

_DATABASE = "ingest_stages"
os.environ["DATABASE_URL"] = os.environ.get("STAGES_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/{_DATABASE}")

import psycopg  # noqa: E402

from app.core.runs import create_run  # noqa: E402
from app.core.sources_config import load_sources  # noqa: E402
from app.db.migrate import migrate  # noqa: E402
from app.settings import get_settings  # noqa: E402
from bench import data  # noqa: E402
from workers.pipeline.fetch.stage import fetch_run  # noqa: E402
from workers.pipeline.normalize import stage as chunk_stage  # noqa: E402

TABLES = ("records, runs, raw_chunks, chunk_ledger, rejected_records, checkpoints, source_stats, schema_fields,"
          " drift_events")


class CountingCursor(psycopg.Cursor[Any]):
    """Counts the statements and COPYs sent through it (BEGIN/COMMIT are not counted)."""

    sent = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.sent += 1
        return super().execute(*args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.sent += 1
        return super().copy(*args, **kwargs)


def backend_cpu_s(pid: int) -> float:
    """utime + stime of a process on this machine, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_load(url: str, csv_path: Path) -> dict[str, float]:
    source = load_sources(ROOT / "sources.toml")["passengers"].model_copy(update={"url": str(csv_path)})
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    with psycopg.connect(url, cursor_factory=CountingCursor) as conn:
        run_id = int(create_run(conn, source, "cli")["id"])
        chunks: list[int] = []
        backend = conn.info.backend_pid
        clocks = [(time.perf_counter(), time.process_time(), backend_cpu_s(backend))]
        fetch_run(conn, run_id, enqueue_chunk=lambda _run, chunk_no: chunks.append(chunk_no), max_attempts=5)
        clocks.append((time.perf_counter(), time.process_time(), backend_cpu_s(backend)))
        CountingCursor.sent = 0
        for chunk_no in chunks:
            chunk_stage.normalize_and_upsert(conn, run_id, chunk_no)
        clocks.append((time.perf_counter(), time.process_time(), backend_cpu_s(backend)))
        row = conn.execute("SELECT status, inserted FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None and row[0] == "succeeded", row
    (w0, p0, b0), (w1, p1, b1), (w2, p2, b2) = clocks
    return {"fetch wall s": w1 - w0, "fetch cpu s": p1 - p0, "fetch backend cpu s": b1 - b0,
            "chunks wall s": w2 - w1, "chunks cpu s": p2 - p1, "chunks backend cpu s": b2 - b1,
            "total wall s": w2 - w0, "total cpu s (both)": (p2 - p0) + (b2 - b0),
            "statements per chunk": CountingCursor.sent / len(chunks), "inserted": row[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = get_settings()
    migrate(settings)
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    csv_path = data.titanic_csv(out, args.rows)
    results = [one_load(settings.libpq_url, csv_path) for _ in range(args.repeats)]
    for key in results[0]:
        values = [result[key] for result in results]
        print(f"{key:>22}: median {statistics.median(values):.3f}  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
