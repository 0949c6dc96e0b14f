"""Test fixtures: a throw-away PostgreSQL database, a private Redis database number, and
a real Celery worker process. Nothing here touches data a user cares about.

Environment knobs: TEST_REDIS_DB (default 15) picks the Redis database; the PostgreSQL
database is `ingest_test_<pid>`, created and dropped by the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
_PG_BASE = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
_REDIS_BASE = os.environ.get("TEST_REDIS_BASE", "redis://127.0.0.1:6379")
TEST_DB_NAME = f"ingest_test_{os.getpid()}"
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))

# Set before anything imports app.settings / celeryconfig, so every module, and every
# process the tests start, sees the test database and the test Redis database only.
os.environ["DATABASE_URL"] = f"{_PG_BASE}/{TEST_DB_NAME}"
os.environ["REDIS_URL"] = f"{_REDIS_BASE}/{TEST_REDIS_DB}"
os.environ.pop("CELERY_BROKER_URL", None)
os.environ["TASK_TIMEOUT_S"] = os.environ.get("TEST_TASK_TIMEOUT_S", "30")
os.environ["LOG_FORMAT"] = "console"
os.environ["SOURCES_FILE"] = str(ROOT / "tests" / "cases" / "sources.test.toml")
os.environ.setdefault("API_KEYS", "test-key,sha256:" + __import__("hashlib").sha256(b"hashed-key").hexdigest())
# A secret the tests can grep for: it must never reach the database, logs or responses.
os.environ["TEST_SOURCE_TOKEN"] = "s3cr3t-token-value-4711"

from app.db.migrate import migrate  # noqa: E402
from app.settings import Settings, get_settings  # noqa: E402

DATA_TABLES = (
    "records, runs, raw_chunks, chunk_ledger, rejected_records, checkpoints, sources, "
    "source_stats, schema_fields, drift_events, idempotency_keys, webhook_deliveries"
)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[str]:
    """Create and migrate the test database once; drop it at the end."""
    migrate(settings)
    yield settings.libpq_url
    with psycopg.connect(settings.maintenance_url(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (TEST_DB_NAME,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB_NAME}"')


@pytest.fixture
def db(database: str) -> Iterator[psycopg.Connection]:
    """A connection to a freshly emptied test database (and an emptied test Redis db)."""
    with psycopg.connect(database, autocommit=True) as conn:
        for attempt in range(5):
            try:  # a worker still finishing an earlier test's run may lock tables in another order
                conn.execute(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
        yield conn


class WorkerProcess:
    """A real `celery -A workers worker` subprocess on the test broker."""

    def __init__(self, name: str, concurrency: int = 2, extra_env: dict[str, str] | None = None):
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"worker-{name}.log"
        self.name = name
        self.concurrency = concurrency
        self.env = {**os.environ, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-l", "INFO",
             "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 60) -> None:
        from app.core.enqueue import producer

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
            replies = producer().control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=1.0)
            if replies:
                return
        raise RuntimeError(f"worker not ready after {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> WorkerProcess:
        self.stop()
        return self.start()


_session_workers: list[WorkerProcess] = []  # the `worker` fixture's process, once started


@pytest.fixture(scope="session")
def worker(database: str) -> Iterator[WorkerProcess]:
    """One real worker for the whole session, consuming every queue."""
    process = WorkerProcess(f"test-{os.getpid()}").start()
    _session_workers.append(process)
    yield process
    _session_workers.remove(process)
    process.stop()


@contextmanager
def _session_worker_stopped() -> Iterator[None]:
    running = [process for process in _session_workers if process.running]
    for process in running:
        process.stop()
    try:
        yield
    finally:
        for process in running:
            process.start()


@pytest.fixture
def idle_broker() -> Iterator[None]:
    """No worker consumes the test broker during the test, so sent messages stay queued
    (the session worker, when an earlier test started it, is stopped and started again)."""
    with _session_worker_stopped():
        yield


@pytest.fixture(scope="session")
def session_worker_stopped() -> Callable[[], AbstractContextManager[None]]:
    """For tests that start their own workers on the test broker: `with session_worker_stopped():`
    stops the session worker (if it was started) so it cannot take their tasks, then starts it again."""
    return _session_worker_stopped
