"""The benchmark's figures as markdown (docs/benchmarks.md), with the machine and the targets."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]


def machine(db_url: str, *, workers_concurrency: int | None) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n")
    total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().split("\n")
                if line.startswith("model name")), platform.processor())
    with psycopg.connect(db_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings: dict[str, str] = dict(conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
            " ('shared_buffers', 'max_wal_size', 'synchronous_commit', 'wal_level', 'fsync')"
        ).fetchall())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)  # noqa: S603,S607
    dirty = subprocess.run(["git", "status", "--porcelain", "workers", "app"], cwd=ROOT, capture_output=True, text=True)  # noqa: S603,S607
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "postgresql": version,
        "pg_settings": settings,
        "python": platform.python_version(),
        "worker_concurrency": workers_concurrency or (os.cpu_count() or 1) + 1,  # celeryconfig's default
        "commit": commit.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else ""),
    }


NOTES_MARKER = "<!-- Everything below this line is written by hand and kept by `make bench`. -->"


def with_kept_notes(text: str, doc: Path) -> str:
    """The new figures, followed by the hand-written notes of the existing document."""
    old = doc.read_text() if doc.exists() else ""
    if NOTES_MARKER not in old:
        return text
    return text + "\n" + NOTES_MARKER + old.split(NOTES_MARKER, 1)[1]


def _ok(passed: bool) -> str:
    return "met" if passed else "**not met**"


def _s(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def render(results: dict[str, Any], *, command: str) -> str:
    args, m = results["args"], results["machine"]
    rows, json_records = args["rows"], args["json_records"]
    ref, first = results["reference_s"], results["first_s"]
    unchanged, changed, json_s = results["unchanged_s"], results["changed_s"], results["json_s"]
    peak_small, peak_full = results["peak_100k_mib"], results["peak_1m_mib"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `make bench` (`{command}`); every figure is the median of {args['repeats']} "
        "repeat(s) unless it says otherwise. Runs go through the real stack: `POST /runs` on the API "
        "(uvicorn), Celery workers on Redis, PostgreSQL; a run is timed from the request until "
        "`GET /runs/{id}` reports it finished.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, PostgreSQL {m['postgresql']} "
        f"on the same machine, Python {m['python']}",
        "- PostgreSQL settings: " + ", ".join(f"{k}={v}" for k, v in sorted(m["pg_settings"].items())),
        f"- worker: `celery -A workers worker -c {m['worker_concurrency']}`; API: one uvicorn process",
        f"- load average before / after: {_load(results['load_before'])} / {_load(results['load_after'])}",
        f"- code: commit {m['commit']}",
        "",
        f"## Ingestion: {rows:,}-row Titanic-format CSV, {json_records:,}-record paginated JSON API",
        "",
        "| step | ours | reference | ratio | target |",
        "|---|---|---|---|---|",
        f"| first load, CSV end to end | {_s(first)} | {_s(ref)} (`\\copy`) | {first / ref:.2f}x | "
        f"≤ 1.5x: {_ok(first <= 1.5 * ref)} |",
        f"| re-run, file unchanged | {_s(unchanged)} | | {unchanged / first:.1%} of first load | "
        f"≤ 2%: {_ok(unchanged <= 0.02 * first)} |",
        f"| re-run, 1% of rows changed | {_s(changed)} | | {changed / first:.1%} of first load | "
        f"≤ 25%: {_ok(changed <= 0.25 * first)} |",
        f"| JSON API first load ({json_records:,} records, 1,000 per page) | {_s(json_s)} | | | |",
        "",
        f"- throughput: CSV {rows / first:,.0f} records/s; JSON API {json_records / json_s:,.0f} records/s "
        f"(reference `\\copy` {rows / ref:,.0f} rows/s)",
        "- CPU seconds spent (median), worker processes / this database's PostgreSQL backends: "
        + "; ".join(f"{name} {c['workers']:.1f} / {c['postgres']:.1f}" for name, c in results["cpu_s"].items()),
        f"- unchanged re-run counts: {results['unchanged_counts']} (recognised by file hash before parsing)",
        f"- 1%-changed re-run counts: {results['changed_counts']}; rows stored as raw chunks "
        f"{results['changed_detail']['rows_stored']:,}, left out unchanged at the fetch stage "
        f"{results['changed_detail']['rows_left_out']:,} (raw digest), records written "
        f"{results['changed_detail']['records_written']:,}",
        f"- worker peak RSS (largest single worker process, VmHWM): {peak_small:.0f} MiB at 100,000 rows, "
        f"{peak_full:.0f} MiB at {rows:,} rows = {peak_full / peak_small:.2f}x; targets ≤ 1.2x: "
        f"{_ok(peak_full <= 1.2 * peak_small)}, < 150 MB per process: {_ok(peak_full * 1.048576 < 150)}",
        "- every repeat (s): " + "; ".join(
            f"{name} " + ", ".join(f"{v:.2f}" for v in values) for name, values in results["all"].items()
        ),
        "",
        "The reference is one psql `\\copy` of the same rows, already normalised by our Normalizer, "
        "into a fresh table created `LIKE records INCLUDING ALL` (same columns, unique (source, "
        "external_id), jsonb, stored tsvector GENERATED column + GIN index, updated_at index). A "
        "CHECKPOINT precedes every timed step, so no step pays for the previous one's dirty buffers.",
    ]
    if "api" in results:
        lines += api_section(results["api"], load_seconds=args["load_seconds"])
    if "scale" in results:
        lines += scale_section(results["scale"], rows=rows, first_s=first, peak_full=peak_full)
    return "\n".join(lines) + "\n"


def scale_section(scale: dict[str, Any], *, rows: int, first_s: float, peak_full: float) -> list[str]:
    """The long-source loads (scripts/bench/scale.py), as ratios to the first load above."""
    n, seconds, killed = scale["rows"], scale["seconds"], scale["killed_seconds"]
    rate, rate_base = n / seconds, rows / first_s
    peak = scale["peak_worker_mib"]
    return [
        "",
        f"## A long source: {n:,}-row CSV ({scale['file_mib']:,.0f} MiB), once, with the default settings",
        "",
        "The same Titanic-format rows and source settings as above, after the repeats, with beat "
        "running (the killed load needs the reconciler). The fetch works in segments "
        "(FETCH_SEGMENT_S, FETCH_SEGMENT_CHUNKS); the kill is a SIGKILL to the whole worker's "
        "process group once `GET /runs/{id}` shows half the file read, and a new worker starts at once.",
        "",
        "| measure | figure | target |",
        "|---|---|---|",
        f"| records/s, {n:,} rows vs {rows:,} rows | {rate:,.0f} vs {rate_base:,.0f} = {rate / rate_base:.2f}x | "
        f"within 10%: {_ok(rate >= 0.9 * rate_base)} |",
        f"| worker peak RSS, {n:,} rows vs {rows:,} rows | {peak:.0f} vs {peak_full:.0f} MiB = "
        f"{peak / peak_full:.2f}x | ≤ 1.1x: {_ok(peak <= 1.1 * peak_full)} |",
        f"| whole worker SIGKILLed at {scale['killed_at_fraction']:.0%} of the fetch: total time | "
        f"{_s(killed)} vs {_s(seconds)} = {killed / seconds:.2f}x | ≤ 1.15x: {_ok(killed <= 1.15 * seconds)} |",
        "",
        f"- fetch segments: {scale['segments']} ({scale['fetch_attempts']} fetch tasks) uninterrupted; "
        f"{scale['killed_segments']} ({scale['killed_fetch_attempts']} fetch tasks: the one killed mid-segment "
        "re-read from its segment's start) when killed",
        f"- disk after the load: records {scale['table_mib']:,.0f} MiB (table, TOAST and indexes), raw chunks "
        f"{scale['raw_mib']:,.0f} MiB, which RAW_RETENTION_DAYS (default 7) frees after the run finished",
    ]


def api_section(api: dict[str, Any], *, load_seconds: float) -> list[str]:
    meta = api["_meta"]
    first, ref = api["/data first page"], api["reference handler (first page)"]
    deep = api["/data deep keyset page"]
    stats = api["/stats"]
    lines = [
        "",
        f"## API at {meta['records']:,} records",
        "",
        f"wrk, {load_seconds:g} s per measurement: latency with 8 connections, throughput with 32; "
        f"`q` matches {meta['q_matches']} records; the deep keyset page starts after record "
        f"{meta['deep'] - 1:,} (a cursor built with the API's own encoder, checked against the API). "
        "Load generator, API and PostgreSQL share the machine.",
        "",
        "| endpoint | p50 (8 conn) | p99 (8 conn) | req/s (8 conn) | req/s (32 conn) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in api.items():
        if name.startswith("_"):
            continue
        lines.append(f"| {name} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['rps_8']:,.0f} | "
                     f"{r['rps_32']:,.0f} | {r['errors']} |")
    lines += [
        "",
        f"- /data first page p99 < 20 ms: {_ok(first['p99_ms'] < 20)}; /stats p99 < 20 ms: {_ok(stats['p99_ms'] < 20)}",
        f"- deep keyset page within 1.5x of the first page (p50): {deep['p50_ms'] / first['p50_ms']:.2f}x, "
        f"{_ok(deep['p50_ms'] <= 1.5 * first['p50_ms'])}",
        f"- /data req/s ≥ 70% of the reference handler's: {first['rps_32'] / ref['rps_32']:.0%}, "
        f"{_ok(first['rps_32'] >= 0.7 * ref['rps_32'])}",
    ]
    return lines


def _load(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)
