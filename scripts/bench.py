"""`make bench`: ingestion and API performance on the real stack, against reference figures.

    python scripts/bench.py                          # 1M-row CSV, 100k-record JSON API, 3 repeats, 10M-row CSV
    python scripts/bench.py --rows 100000 --quick --scale-rows 0   # while developing: 1 repeat, short load tests
    python scripts/bench.py --api-only --database ingest_bench_api --redis-db 12   # API load tests only

What it does, in a dedicated database (ingest_bench, dropped and recreated) and a
dedicated Redis database number, with processes it starts and stops itself:

1. generates the inputs deterministically (bench-out/): a Titanic-format CSV, its twin
   with 1% of rows changed, the same rows pre-normalised for COPY, and a paginated JSON API
   served by a real local HTTP server;
2. per repeat: the reference (one psql `\\copy` of the pre-normalised rows into a table
   shaped like `records`: same columns, unique key, jsonb, stored tsvector + GIN, updated_at
   index), then our first load through `POST /runs` (timed from the request until GET
   /runs/{id} says finished), an unchanged re-run, a 1%-changed re-run, and the JSON API;
3. worker peak RSS (VmHWM of every worker process, sampled from /proc) at 100k and at
   the full row count;
4. with the data in place (over a million records): wrk against /data (first page, a
   keyset page past 900,000, a selective `q`), /stats, and a minimal asyncpg + Starlette
   handler serving the same first-page query, as the ceiling;
5. a long source (scripts/bench/scale.py): the --scale-rows CSV (10M rows) loaded once
   whole and once with the whole worker SIGKILLed halfway through its fetch, with beat
   running, compared with the 1M-row first load (records/s, worker peak RSS);
6. prints the figures and writes them, with the machine, to docs/benchmarks.md.

With --api-only, only step 4 runs, against the database as it is (never dropped). When it
has no records yet, they are loaded once the fast way: the pre-normalised rows (the
--rows CSV as `bench_csv`, its first 100k rows as `bench_csv_100k`) COPYed straight into
`records`, their counts into `source_stats` and one succeeded run per source into `runs`,
so /stats has the same work to do as after the full benchmark. Its inputs and logs live
in bench-out/api-only/; it prints the figures and writes no document.

Figures are medians of the repeats. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows (default 1,000,000)")
    parser.add_argument("--json-records", type=int, default=100_000, help="records behind the JSON API")
    parser.add_argument("--scale-rows", type=int, default=10_000_000,
                        help="rows of the long-source CSV, loaded once whole and once with the worker killed "
                             "halfway (default 10,000,000; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every timed step (medians reported)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 3 s load tests, no doc unless --doc")
    parser.add_argument("--concurrency", type=int, default=None, help="worker -c (default: cores + 1)")
    parser.add_argument("--chunk-size", type=int, default=None, help="override the CSV source's chunk_size")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="duration of each wrk run")
    parser.add_argument("--skip-load", action="store_true", help="skip the API load tests")
    parser.add_argument("--api-only", action="store_true",
                        help="only the API load tests, on the database as it is (loaded by COPY when empty)")
    parser.add_argument("--profile", action="store_true", help="py-spy record the workers during the first load")
    parser.add_argument("--doc", type=Path, default=None, help="where to write the report (default docs/benchmarks.md)")
    parser.add_argument("--database", default="ingest_bench")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--private-redis", action="store_true",
                        help="start a private redis-server (on a shared machine, other test sessions flush dbs)")
    parser.add_argument("--api-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--json-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--reference-port", type=int, default=None, help="default: a free port")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
        args.load_seconds = min(args.load_seconds, 3.0)
    args.api_port = args.api_port or free_port()
    args.json_port = args.json_port or free_port()
    args.reference_port = args.reference_port or free_port()
    args.redis_port = free_port() if args.private_redis else None
    if args.doc is None and not args.quick and not args.api_only:
        args.doc = ROOT / "docs" / "benchmarks.md"
    return args


ARGS = parse_args()
# --api-only keeps its sources file, inputs and logs apart from a full run's.
RUN_OUT = OUT / "api-only" if ARGS.api_only else OUT
PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_BASE = (f"redis://127.0.0.1:{ARGS.redis_port}" if ARGS.private_redis
              else os.environ.get("BENCH_REDIS_BASE", "redis://127.0.0.1:6379"))
API_KEY = "bench-key"
SOURCES_FILE = RUN_OUT / "sources.bench.toml"
# Every process (and this one, before anything imports app.settings) sees only the
# benchmark database and Redis database number.
ENV_OVERRIDES = {
    "DATABASE_URL": f"{PG_BASE}/{ARGS.database}",
    "REDIS_URL": f"{REDIS_BASE}/{ARGS.redis_db}",
    "API_KEYS": API_KEY,
    "RATE_LIMIT": "1000000/second",  # the limiter still runs (one Redis script per request); it never says no
    "SOURCES_FILE": str(SOURCES_FILE),
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "console",
}
os.environ.update(ENV_OVERRIDES)
os.environ.pop("CELERY_BROKER_URL", None)
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from bench import data, json_api, load, report, scale, stack  # noqa: E402

from app.api.cursor import encode_cursor, filters_fingerprint  # noqa: E402
from app.core.run_status import FINISHED, RunStatus  # noqa: E402
from app.core.sources_config import load_sources  # noqa: E402
from app.db.migrate import migrate  # noqa: E402
from app.settings import get_settings  # noqa: E402

SETTINGS = get_settings()
DB_URL = SETTINGS.libpq_url
API = f"http://127.0.0.1:{ARGS.api_port}"
LOGS = RUN_OUT / "logs"
API_PID: int | None = None  # set once the API runs: its CPU is reported with each run


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- configuration ----------------------------------------------------------------------


def write_sources_file(current_csv: Path, small_csv: Path | None, scale_csv: Path | None = None) -> None:
    """The benchmark's sources: the shipped `passengers` and `posts` settings (fields,
    types, chunk sizes) pointed at the benchmark's inputs."""
    shipped = load_sources(ROOT / "sources.toml")
    passengers, posts = shipped["passengers"], shipped["posts"]
    csv_chunk = ARGS.chunk_size or passengers.chunk_size

    def csv_section(name: str, path: Path) -> str:
        types = "\n".join(f'{key} = "{value}"' for key, value in passengers.types.items())
        fields = "\n".join(f'{key} = "{value}"' for key, value in passengers.fields.items())
        return (f'[sources.{name}]\nkind = "csv"\nurl = "{path}"\nid_field = "{passengers.id_field}"\n'
                f'schedule = "every 24h"\nchunk_size = {csv_chunk}\n\n'
                f"[sources.{name}.fields]\n{fields}\n\n[sources.{name}.types]\n{types}\n\n")

    text = csv_section("bench_csv", current_csv)
    if small_csv is not None:
        text += csv_section("bench_csv_100k", small_csv)
    if scale_csv is not None:
        text += csv_section("bench_csv_scale", scale_csv)
    text += (f'[sources.bench_api]\nkind = "http_json"\nurl = "http://127.0.0.1:{ARGS.json_port}/posts"\n'
             f'id_field = "id"\npagination = "page"\npage_param = "page"\nsize_param = "per_page"\n'
             f'page_size = 1000\nschedule = "every 24h"\nchunk_size = {posts.chunk_size}\n\n'
             f'[sources.bench_api.fields]\ntitle = "title"\ncontent = "body"\nauthor = "userId"\n'
             f'published_at = "published"\n')
    SOURCES_FILE.write_text(text)


def point(link: Path, target: Path) -> None:
    """Make the CSV source's path name another file (atomically, as an operator's mv would)."""
    tmp = link.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


# --- timed steps --------------------------------------------------------------------------


@dataclass
class RunResult:
    seconds: float
    run: dict[str, Any]
    peak_worker_mib: float | None = None
    worker_peaks_mib: dict[int, float] = field(default_factory=dict)
    worker_cpu_s: float | None = None
    worker_parent_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    api_cpu_s: float | None = None


def timed_run(client: httpx.Client, source: str, workers: Workers, *, timeout_s: float = 1800) -> RunResult:
    """POST /runs for one source; the time until GET /runs/{id} reports it finished."""
    assert workers.proc is not None
    with stack.CpuMeter(workers.proc.pid, DB_URL, ARGS.database, api_pid=API_PID) as cpu:
        result = _timed_run(client, source, timeout_s)
    result.worker_cpu_s, result.postgres_cpu_s = cpu.worker_s, cpu.postgres_s
    result.worker_parent_cpu_s, result.api_cpu_s = cpu.worker_parent_s, cpu.api_s
    return result


def _timed_run(client: httpx.Client, source: str, timeout_s: float) -> RunResult:
    """The run's own finished_at (PostgreSQL's clock, the same machine's) minus the moment the
    request was sent: exact whatever the polling interval. Polling backs off from 10 ms to
    250 ms, so a long run is not slowed by the API answering polls on the same two cores."""
    sent_at = time.time()
    started = time.perf_counter()
    response = client.post("/runs", json={"sources": [source]}, headers={"X-API-Key": API_KEY})
    response.raise_for_status()
    run_id = response.json()["runs"][0]["id"]
    deadline = started + timeout_s
    pause = 0.01
    while time.perf_counter() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] == RunStatus.QUEUED and time.perf_counter() - started > 60:
            raise RuntimeError(f"run {run_id} still queued after 60 s: its fetch message was lost (is another "
                               f"process flushing Redis db {ARGS.redis_db}? try --private-redis)")
        if run["status"] in FINISHED:
            if run["status"] != RunStatus.SUCCEEDED:
                raise RuntimeError(f"run {run_id} of {source} ended {run['status']}: {run}")
            counts = run["counts"]
            outcomes = counts["inserted"] + counts["updated"] + counts["unchanged"] + counts["rejected"]
            assert counts["fetched"] == outcomes, f"count invariant broken: {run}"
            elapsed = datetime.fromisoformat(run["finished_at"]).timestamp() - sent_at
            return RunResult(seconds=elapsed, run=run)
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)
    raise RuntimeError(f"run {run_id} of {source} not finished after {timeout_s}s")


def reference_copy(copy_file: Path) -> float:
    """One psql `\\copy` of the pre-normalised rows into a fresh records-shaped table."""
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ref_records")
        conn.execute("CREATE TABLE ref_records (LIKE records INCLUDING ALL)")  # columns, generated, indexes
        conn.execute("CREATE SEQUENCE ref_records_id_seq OWNED BY ref_records.id")
        conn.execute("ALTER TABLE ref_records ALTER id SET DEFAULT nextval('ref_records_id_seq')")
        conn.execute("CHECKPOINT")
    command = f"\\copy ref_records ({data.REFERENCE_COLUMNS}) FROM '{copy_file}'"
    started = time.perf_counter()
    subprocess.run(["psql", DB_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command], check=True)  # noqa: S603,S607
    elapsed = time.perf_counter() - started
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        loaded = conn.execute("SELECT count(*) FROM ref_records").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE ref_records")
    assert loaded == ARGS.rows, f"reference loaded {loaded} rows"
    return elapsed


class Workers:
    """The Celery worker, restarted before each first load so its memory peak is that load's."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: stack.Process | None = None

    def restart(self) -> stack.Process:
        self.stop()
        self.proc = stack.start_worker(self.env, LOGS, ARGS.concurrency)
        time.sleep(1.0)  # the pool children finish importing
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def first_load(client: httpx.Client, workers: Workers, source: str) -> RunResult:
    proc = workers.restart()
    stack.checkpoint(DB_URL)
    with stack.MemorySampler(proc.pid) as memory, profiled(workers, f"first-{source}"):
        result = timed_run(client, source, workers)
    result.peak_worker_mib = memory.max_mib
    result.worker_peaks_mib = memory.children_mib
    return result


@contextmanager
def profiled(workers: Workers, name: str) -> Iterator[None]:
    """With --profile: py-spy over the worker and its pool children (`pip install py-spy`),
    collapsed stacks of CPU time in bench-out/profile-<name>.txt."""
    if not ARGS.profile or workers.proc is None:
        yield
        return
    target = OUT / f"profile-{name}-{ARGS.rows}.txt"
    spy = subprocess.Popen(  # noqa: S603
        [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses",
         "--pid", str(workers.proc.pid), "--rate", "100", "--format", "raw", "--output", str(target)],
        stdout=(LOGS / "py-spy.log").open("ab"), stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait()


# --- API load ---------------------------------------------------------------------------


def deep_cursor(client: httpx.Client, position: int) -> str:
    """A keyset cursor resuming after the record at `position` (ids in order).

    Built with the API's own cursor encoder for the unfiltered walk, then checked against
    the API: walking there page by page would only take longer to reach the same cursor.
    """
    with psycopg.connect(DB_URL) as conn:
        after = conn.execute("SELECT id FROM records ORDER BY id OFFSET %s LIMIT 1", (position - 1,)).fetchone()
    assert after is not None, f"fewer than {position} records"
    unfiltered = filters_fingerprint(sources=[], q=None, since=None, until=None)
    cursor = encode_cursor(after_id=after[0], fingerprint=unfiltered)
    page = client.get("/data", params={"cursor": cursor})
    page.raise_for_status()
    assert page.json()["items"][0]["id"] > after[0]
    return cursor


def load_tests(client: httpx.Client, reference_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE records")  # what autovacuum does after a big load
        total = conn.execute("SELECT count(*) FROM records").fetchone()[0]  # type: ignore[index]
    q_page = client.get("/data", params={"q": data_q()}).json()
    log(f"API load tests over {total} records; q={data_q()!r} matches {q_page['total']}")
    deep = min(900_001, total - 60)
    targets = {
        "/data first page": f"{API}/data",
        "/data deep keyset page": f"{API}/data?cursor={deep_cursor(client, deep)}",
        f"/data?q={data_q()}": f"{API}/data?q={data_q()}",
        "/stats": f"{API}/stats",
        "reference handler (first page)": reference_url,
    }
    results: dict[str, dict[str, Any]] = {"_meta": {"records": total, "q_matches": q_page["total"], "deep": deep}}
    for name, url in targets.items():
        load.run(url, connections=8, duration_s=1)  # warm-up
        latency = [load.run(url, connections=8, duration_s=ARGS.load_seconds) for _ in range(ARGS.repeats)]
        rate = [load.run(url, connections=32, duration_s=ARGS.load_seconds) for _ in range(ARGS.repeats)]
        results[name] = {
            "p50_ms": statistics.median(r.p50_ms for r in latency),
            "p99_ms": statistics.median(r.p99_ms for r in latency),
            "rps_8": statistics.median(r.requests_per_s for r in latency),
            "rps_32": statistics.median(r.requests_per_s for r in rate),
            "errors": sum(r.errors for r in latency + rate),
            "tool": latency[0].tool,
        }
        log(f"  {name}: p50 {results[name]['p50_ms']:.2f} ms, p99 {results[name]['p99_ms']:.2f} ms, "
            f"{results[name]['rps_32']:.0f} req/s at 32, errors {results[name]['errors']}")
    return results


def data_q() -> str:
    return "aurora"


# --- main -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu(result: RunResult) -> str:
    return (f"CPU: workers {result.worker_cpu_s:.1f} s (of which the Celery main process "
            f"{result.worker_parent_cpu_s:.1f} s), PostgreSQL backends {result.postgres_cpu_s:.1f} s, "
            f"API {result.api_cpu_s:.1f} s")


def what_the_rerun_touched(run_id: int) -> dict[str, int]:
    """Rows the re-run stored as raw chunks and left out at the fetch stage, and the records
    it wrote (their last_run_id is the run's)."""
    with psycopg.connect(DB_URL) as conn:
        stored, skipped = conn.execute(
            "SELECT coalesce(sum(item_count), 0), coalesce(sum(skipped), 0) FROM raw_chunks WHERE run_id = %s",
            (run_id,),
        ).fetchone() or (0, 0)
        (written,) = conn.execute("SELECT count(*) FROM records WHERE last_run_id = %s", (run_id,)).fetchone() or (0,)
    return {"rows_stored": int(stored), "rows_left_out": int(skipped), "records_written": int(written)}


def run_repeats(client: httpx.Client, workers: Workers, files: dict[str, Path]) -> dict[str, Any]:
    rows, changed = ARGS.rows, files["changed_count"]
    steps: dict[str, list[Any]] = {"reference": [], "first": [], "unchanged": [], "changed": [], "json": []}
    for repeat in range(1, ARGS.repeats + 1):
        log(f"repeat {repeat}/{ARGS.repeats}")
        stack.empty_tables(DB_URL)
        steps["reference"].append(reference_copy(files["copy"]))
        log(f"  reference \\copy: {steps['reference'][-1]:.2f} s")

        stack.empty_tables(DB_URL)
        point(files["current"], files["base"])
        first = first_load(client, workers, "bench_csv")
        assert first.run["counts"]["inserted"] == rows, first.run
        steps["first"].append(first)
        log(f"  first load: {first.seconds:.2f} s ({cpu(first)}), worker peak {first.peak_worker_mib:.0f} MiB "
            f"(per process: {first.worker_peaks_mib})")

        stack.checkpoint(DB_URL)
        unchanged = timed_run(client, "bench_csv", workers)
        assert unchanged.run["counts"]["fetched"] == 0, f"unchanged file was parsed: {unchanged.run}"
        steps["unchanged"].append(unchanged)
        log(f"  unchanged re-run: {unchanged.seconds:.3f} s")

        point(files["current"], files["changed"])
        stack.checkpoint(DB_URL)
        with profiled(workers, "changed"):
            changed_run = timed_run(client, "bench_csv", workers)
        counts = changed_run.run["counts"]
        assert counts["updated"] == changed and counts["inserted"] == 0, changed_run.run
        steps["changed"].append(changed_run)
        log(f"  1%-changed re-run: {changed_run.seconds:.2f} s ({cpu(changed_run)}), counts {counts}")
        changed_detail = what_the_rerun_touched(changed_run.run["id"])
        assert changed_detail["records_written"] == changed, changed_detail
        log(f"  1%-changed re-run: {changed_detail}")

        stack.checkpoint(DB_URL)
        json_run = timed_run(client, "bench_api", workers)
        assert json_run.run["counts"]["inserted"] == ARGS.json_records, json_run.run
        steps["json"].append(json_run)
        log(f"  JSON API load: {json_run.seconds:.2f} s ({cpu(json_run)})")
    return {
        "reference_s": median(steps["reference"]),
        "first_s": median([r.seconds for r in steps["first"]]),
        "unchanged_s": median([r.seconds for r in steps["unchanged"]]),
        "changed_s": median([r.seconds for r in steps["changed"]]),
        "json_s": median([r.seconds for r in steps["json"]]),
        "peak_1m_mib": max(r.peak_worker_mib for r in steps["first"]),
        "cpu_s": {
            name: {"workers": median([r.worker_cpu_s for r in steps[name]]),
                   "postgres": median([r.postgres_cpu_s for r in steps[name]])}
            for name in ("first", "unchanged", "changed", "json")
        },
        "changed_counts": steps["changed"][-1].run["counts"],
        "changed_detail": changed_detail,
        "unchanged_counts": steps["unchanged"][-1].run["counts"],
        "all": {name: [r if isinstance(r, float) else r.seconds for r in values] for name, values in steps.items()},
        "worker_peaks": [r.worker_peaks_mib for r in steps["first"]],
    }


def prepare_inputs() -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    log(f"inputs: {ARGS.rows}-row CSV, changed twin, normalised COPY file (cached in {OUT})")
    base = data.titanic_csv(OUT, ARGS.rows)
    changed, changed_count = data.changed_csv(base)
    small = data.titanic_csv(OUT, 100_000) if ARGS.rows > 100_000 else None
    scale_csv = data.titanic_csv(OUT, ARGS.scale_rows) if ARGS.scale_rows else None
    current = OUT / "current.csv"
    point(current, base)
    write_sources_file(current, small, scale_csv)
    copy_file = OUT / f"titanic-{ARGS.rows}.copy"
    source = load_sources(SOURCES_FILE)["bench_csv"]
    if not copy_file.exists() or copy_file.stat().st_mtime < max(base.stat().st_mtime, SOURCES_FILE.stat().st_mtime):
        assert data.reference_rows(base, copy_file, source) == ARGS.rows
    return {"base": base, "changed": changed, "changed_count": changed_count, "small": small,
            "current": current, "copy": copy_file, "scale": scale_csv}


def scale_runs(client: httpx.Client, workers: Workers, env: dict[str, str], path: Path) -> dict[str, Any]:
    """The long-source loads (scripts/bench/scale.py): uninterrupted, then killed halfway."""
    beat = stack.start_beat(env, LOGS)
    try:
        stack.empty_tables(DB_URL)
        log(f"{ARGS.scale_rows:,}-row CSV ({path.stat().st_size / 2**20:,.0f} MiB), uninterrupted")
        plain = first_load(client, workers, "bench_csv_scale")
        table_mib, raw_mib = scale.sizes_mib(DB_URL)
        plain_info = scale.run_info(DB_URL, plain.run["id"])
        log(f"  {plain.seconds:.1f} s, worker peak {plain.peak_worker_mib:.0f} MiB, {plain_info}, "
            f"records {table_mib:,.0f} MiB, raw chunks {raw_mib:,.0f} MiB")

        stack.empty_tables(DB_URL)
        workers.restart()
        log(f"{ARGS.scale_rows:,}-row CSV, the whole worker SIGKILLed at {scale.KILL_AT:.0%} of the fetch")
        sent_at = time.time()
        response = client.post("/runs", json={"sources": ["bench_csv_scale"]}, headers={"X-API-Key": API_KEY})
        response.raise_for_status()
        run_id = response.json()["runs"][0]["id"]
        assert workers.proc is not None
        fraction = scale.kill_at_half(client, run_id, workers.proc, lambda: workers.restart())
        log(f"  killed at {fraction:.0%} of the file read; a new worker started")
        while (run := client.get(f"/runs/{run_id}").json())["status"] not in FINISHED:
            time.sleep(0.25)
        assert run["status"] == RunStatus.SUCCEEDED, run
        assert run["counts"]["inserted"] == ARGS.scale_rows, run
        killed_s = datetime.fromisoformat(run["finished_at"]).timestamp() - sent_at
        killed_info = scale.run_info(DB_URL, run_id)
        log(f"  {killed_s:.1f} s ({killed_s / plain.seconds:.2f}x uninterrupted), {killed_info}")
    finally:
        beat.stop()
    return {"scale": scale.ScaleResult(
        rows=ARGS.scale_rows, seconds=plain.seconds, peak_worker_mib=plain.peak_worker_mib,
        killed_seconds=killed_s, killed_at_fraction=fraction, segments=plain_info["segments"],
        fetch_attempts=plain_info["fetch_attempts"], killed_segments=killed_info["segments"],
        killed_fetch_attempts=killed_info["fetch_attempts"], table_mib=table_mib, raw_mib=raw_mib,
        file_mib=path.stat().st_size / 2**20,
    ).__dict__}


def json_api_rows(out: Path, source: Any) -> int:
    """The JSON API's records, normalised by the pipeline's Normalizer, as a COPY file."""
    # Imported here: importing `workers` reads SOURCES_FILE, which is written first.
    from workers.pipeline.normalize.normalizer import Normalizer
    from workers.sources.base import RawItem

    normalizer = Normalizer(source)
    items = [RawItem(record=post, line=n) for n, post in enumerate(json_api.posts(ARGS.json_records), start=1)]
    with out.open("w", encoding="utf-8") as handle:
        return sum(data._write_batch(handle, normalizer, items[i : i + 10_000], source.name)  # noqa: SLF001
                   for i in range(0, len(items), 10_000))


def load_by_copy() -> None:
    """Fill an empty benchmark database the fast way (see --api-only in the docstring): the
    records the full benchmark ends with (the CSV's and the JSON API's), without the pipeline."""
    RUN_OUT.mkdir(parents=True, exist_ok=True)
    base = data.titanic_csv(RUN_OUT, ARGS.rows)
    write_sources_file(base, None)
    configured = load_sources(SOURCES_FILE)
    copies = {"bench_csv": RUN_OUT / f"{base.stem}.copy", "bench_api": RUN_OUT / f"posts-{ARGS.json_records}.copy"}
    if not copies["bench_csv"].exists() or copies["bench_csv"].stat().st_mtime < base.stat().st_mtime:
        log(f"normalising {base.name} for COPY")
        data.reference_rows(base, copies["bench_csv"], configured["bench_csv"])
    if not copies["bench_api"].exists():
        log(f"normalising {ARGS.json_records} JSON API records for COPY")
        json_api_rows(copies["bench_api"], configured["bench_api"])
    for copy_file in copies.values():
        log(f"COPY {copy_file.name} into records")
        command = f"\\copy records ({data.REFERENCE_COLUMNS}) FROM '{copy_file}'"
        subprocess.run(["psql", DB_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command], check=True)  # noqa: S603,S607
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("INSERT INTO source_stats (source, records) SELECT source, count(*) FROM records GROUP BY source")
        conn.execute(
            "INSERT INTO runs (source, trigger, status, config, created_at, started_at, finished_at, fetched, inserted)"
            " SELECT source, 'api', %s, '{}', now(), now(), now(), records, records FROM source_stats",
            (RunStatus.SUCCEEDED,),
        )
        conn.execute("VACUUM ANALYZE")


def api_only() -> None:
    """--api-only: the API load tests against the benchmark database as it is."""
    env = {**os.environ, **ENV_OVERRIDES}
    RUN_OUT.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(SETTINGS.maintenance_url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ARGS.database,)).fetchone()
    if not exists:
        stack.recreate_database(SETTINGS.maintenance_url(), ARGS.database)
    migrate(SETTINGS)
    with psycopg.connect(DB_URL) as conn:
        loaded = conn.execute("SELECT EXISTS (SELECT 1 FROM records)").fetchone()[0]  # type: ignore[index]
    if not loaded:
        load_by_copy()
    elif not SOURCES_FILE.exists():
        write_sources_file(data.titanic_csv(RUN_OUT, ARGS.rows), None)
    redis.Redis.from_url(SETTINGS.redis_url).flushdb()  # the dedicated benchmark db number only
    processes: list[stack.Process] = []
    try:
        if ARGS.private_redis:
            processes.append(stack.start_redis(env, LOGS, ARGS.redis_port))
        processes.append(stack.start_api(env, LOGS, ARGS.api_port))
        processes.append(stack.start_reference_app(env, LOGS, ARGS.reference_port))
        with httpx.Client(base_url=API, timeout=30) as client:
            api = load_tests(client, f"http://127.0.0.1:{ARGS.reference_port}/data")
    finally:
        for proc in reversed(processes):
            proc.stop()
    (RUN_OUT / "results.json").write_bytes(orjson.dumps(api, option=orjson.OPT_INDENT_2))
    print("\n".join(report.api_section(api, load_seconds=ARGS.load_seconds)))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below, stop our children
    if ARGS.api_only:
        api_only()
        return
    load_before = os.getloadavg()
    files = prepare_inputs()
    env = {**os.environ, **ENV_OVERRIDES}
    processes: list[stack.Process] = []
    workers = Workers(env)
    try:
        if ARGS.private_redis:
            processes.append(stack.start_redis(env, LOGS, ARGS.redis_port))
        log(f"database {ARGS.database} (recreated), redis {SETTINGS.redis_url}")
        stack.recreate_database(SETTINGS.maintenance_url(), ARGS.database)
        migrate(SETTINGS)
        redis.Redis.from_url(SETTINGS.redis_url).flushdb()  # the dedicated benchmark db number only
        processes.append(stack.start_json_api(env, LOGS, ARGS.json_port, ARGS.json_records))
        processes.append(stack.start_api(env, LOGS, ARGS.api_port))
        global API_PID
        API_PID = processes[-1].pid
        with httpx.Client(base_url=API, timeout=30) as client:
            results: dict[str, Any] = {"args": vars(ARGS) | {"doc": str(ARGS.doc)}, "load_before": load_before}
            if files["small"] is not None:
                stack.empty_tables(DB_URL)
                small = first_load(client, workers, "bench_csv_100k")
                results["peak_100k_mib"] = small.peak_worker_mib
                results["small_s"] = small.seconds
                log(f"100k first load: {small.seconds:.2f} s, worker peak {small.peak_worker_mib:.0f} MiB")
            results.update(run_repeats(client, workers, files))
            if "peak_100k_mib" not in results:
                results["peak_100k_mib"] = results["peak_1m_mib"]
            if not ARGS.skip_load:
                processes.append(stack.start_reference_app(env, LOGS, ARGS.reference_port))
                results["api"] = load_tests(client, f"http://127.0.0.1:{ARGS.reference_port}/data")
            if files["scale"] is not None:  # last: it empties the tables the API load tests read
                results.update(scale_runs(client, workers, env, files["scale"]))
        results["load_after"] = os.getloadavg()
        results["machine"] = report.machine(DB_URL, workers_concurrency=ARGS.concurrency)
    finally:
        workers.stop()
        for proc in reversed(processes):
            proc.stop()
    as_json = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    (OUT / f"results-{ARGS.rows}.json").write_bytes(as_json)
    text = report.render(results, command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]]))
    print(text)
    if ARGS.doc:
        ARGS.doc.write_text(report.with_kept_notes(text, ARGS.doc))
        log(f"wrote {ARGS.doc}")


if __name__ == "__main__":
    main()
