"""The real stack for the benchmark: a dedicated database, processes we start and stop
ourselves (API, Celery worker, JSON API, reference handler), and worker memory sampling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
DATA_TABLES = (
    "records, runs, raw_chunks, chunk_ledger, rejected_records, checkpoints, sources, "
    "source_stats, schema_fields, drift_events, idempotency_keys"
)


def recreate_database(maintenance_url: str, name: str) -> None:
    """Drop and create the dedicated benchmark database (never any other)."""
    assert name.startswith("ingest_bench"), name
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def empty_tables(url: str) -> None:
    """Back to an empty schema (fresh tables and indexes), then a checkpoint so dirty
    buffers of the previous step are not flushed on the next step's clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")
        conn.execute("CHECKPOINT")


def checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


class Process:
    """A child process in its own session, logging to a file; stopped by its own id."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logs: Path):
        self.name = name
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; {self.log_path}:\n{tail}")

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group is this process and its own children only
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now (other people's servers share this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: Process, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                time.sleep(0.3)
                proc.check_alive()  # the answer came from our process, not a squatter on the port
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout_s}s; see {proc.log_path}")


def start_api(env: dict[str, str], logs: Path, port: int) -> Process:
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--log-level", "warning"]
    proc = Process("api", cmd, env, logs)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def start_reference_app(env: dict[str, str], logs: Path, port: int) -> Process:
    cmd = [sys.executable, "-m", "uvicorn", "bench.reference_app:app", "--app-dir", str(ROOT / "scripts"),
           "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    proc = Process("reference-app", cmd, env, logs)
    wait_http(f"http://127.0.0.1:{port}/data", proc)
    return proc


def start_json_api(env: dict[str, str], logs: Path, port: int, records: int) -> Process:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench" / "json_api.py"), "--port", str(port),
           "--records", str(records)]
    proc = Process("json-api", cmd, env, logs)
    wait_http(f"http://127.0.0.1:{port}/posts?page=1&per_page=1", proc)
    return proc


def start_redis(env: dict[str, str], logs: Path, port: int) -> Process:
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = Process("redis", cmd, env, logs)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not start; see {proc.log_path}")


def start_worker(env: dict[str, str], logs: Path, concurrency: int | None, name: str = "bench") -> Process:
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-l", "WARNING", "-n", f"{name}@%h",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if concurrency:
        cmd += ["-c", str(concurrency)]
    proc = Process("worker", cmd, env, logs)
    from app.core.enqueue import producer  # env is set by bench.py before any app import

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc.check_alive()
        if producer().control.ping(destination=[f"{name}@{os.uname().nodename}"], timeout=1.0):
            # the pool children exist once the worker answers; give each its own first tick
            return proc
    raise RuntimeError(f"worker not ready; see {proc.log_path}")


def start_beat(env: dict[str, str], logs: Path) -> Process:
    """Beat, for the reconciler (the killed-worker load needs it); its own schedule file."""
    schedule = logs / "beat-schedule"
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "WARNING", "-s", str(schedule),
           "--pidfile", str(logs / "beat.pid")]
    proc = Process("beat", cmd, env, logs)
    time.sleep(2.0)
    proc.check_alive()
    return proc


# --- memory -----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class MemorySampler:
    """Peak RSS of each process under `root_pid`, from VmHWM (the kernel's own peak) read
    every `interval_s`, so pool children recycled mid-run are still counted."""

    root_pid: int
    interval_s: float = 0.1
    peaks_kib: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for pid in descendants(self.root_pid):
            peak = _status_kib(pid, "VmHWM:")
            if peak is not None:
                self.peaks_kib[pid] = max(peak, self.peaks_kib.get(pid, 0))

    @property
    def max_mib(self) -> float:
        """The largest single worker process."""
        return max(self.peaks_kib.values(), default=0) / 1024

    @property
    def children_mib(self) -> dict[int, float]:
        return {pid: kib / 1024 for pid, kib in sorted(self.peaks_kib.items())}


# --- CPU --------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process so far, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def database_backends(url: str, database: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
        ).fetchall()
    return [row[0] for row in rows]


@dataclass
class CpuMeter:
    """CPU seconds spent by the worker processes and by this database's PostgreSQL backends
    during a step: where the time of a run goes, whatever else runs on the machine.

    Sampled every SAMPLE_EVERY_S from a thread, not only at both ends, so that processes
    that live within the step (a fetch's probe connections) are counted too."""

    SAMPLE_EVERY_S = 0.2

    worker_pid: int
    url: str
    database: str
    api_pid: int | None = None
    start: dict[tuple[str, int], float] = field(default_factory=dict)
    latest: dict[tuple[str, int], float] = field(default_factory=dict)
    worker_s: float = 0.0
    worker_parent_s: float = 0.0  # the Celery main process (consumer, pool dispatch, events)
    postgres_s: float = 0.0
    api_s: float = 0.0  # the API answering the benchmark's polls, on the same cores

    def _snapshot(self) -> dict[tuple[str, int], float]:
        found: dict[tuple[str, int], float] = {}
        for kind, pids in (("worker", descendants(self.worker_pid)),
                           ("postgres", database_backends(self.url, self.database)),
                           ("api", [self.api_pid] if self.api_pid else [])):
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    found[(kind, pid)] = seconds
        return found

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_EVERY_S):
            self.latest.update(self._snapshot())

    def __enter__(self) -> CpuMeter:
        self.start = self._snapshot()
        self.latest = dict(self.start)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="cpu-meter", daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        self.latest.update(self._snapshot())
        for (kind, pid), seconds in self.latest.items():
            spent = seconds - self.start.get((kind, pid), 0.0)
            if kind == "worker":
                self.worker_s += spent
                if pid == self.worker_pid:
                    self.worker_parent_s += spent
            elif kind == "api":
                self.api_s += spent
            else:
                self.postgres_s += spent
