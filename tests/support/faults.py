"""Fault injection for the reliability tests: real processes that the tests start, kill
and restart themselves.

Nothing is mocked. Workers and beat are `celery -A workers ...` subprocesses; Redis and
PostgreSQL can be private instances (a redis-server and an initdb cluster on free ports)
so that restarting them never disturbs anyone else's tests. Every process is registered
with a ProcessSet, which kills whatever is still alive when the test ends, pass or fail.

The oracles at the bottom compare the final records table with the known upstream
record set, and a run's counts with the upstream size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
from celery import Celery
from psycopg.rows import dict_row

from tests.support.http_server import Request, Response

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def _find_pg_bin() -> Path | None:
    """Where initdb/pg_ctl live: TEST_PG_BIN, else Debian's 15, else the newest installed, else PATH."""
    if os.environ.get("TEST_PG_BIN"):
        return Path(os.environ["TEST_PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    preferred = [p for p in debian if p.parts[-3] == "15"] or debian[-1:]
    if preferred:
        return preferred[0].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


PG_BIN = _find_pg_bin()


def private_services_missing() -> str | None:
    """Why private Redis/PostgreSQL instances cannot be started here (None when they can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; set TEST_PG_BIN"
    return None

# The workers and beat of these tests run with a short task timeout, so every recovery
# the reconciler performs happens within a bound derived from it.
TASK_TIMEOUT_S = 10
RECONCILE_EVERY_S = max(5, TASK_TIMEOUT_S / 4)  # workers/schedule.py reconcile_interval_s
RECOVERY_BOUND_S = 3 * TASK_TIMEOUT_S + 30

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll until `predicate()` is truthy and return its value; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes, found by walking /proc (no psutil) ------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children_of(pid: int) -> list[int]:
    """Live direct children of `pid` (what `ps --ppid` shows)."""
    found = []
    for candidate in _all_pids():
        fields = _stat(candidate)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[1]) == pid:
            found.append(candidate)
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group."""
    found = []
    for candidate in _all_pids():
        fields = _stat(candidate)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(candidate)
    return found


class ManagedProcess:
    """A subprocess in its own session (so its whole process group can be signalled)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT):
        ARTIFACTS.mkdir(exist_ok=True)
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = ARTIFACTS / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> ManagedProcess:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """What this process wrote since its last start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and every child) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        wait_until(lambda: not group_members(self.pid), 30, f"every process of {self.name} to exit")

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, then SIGKILL for the group if it does not exit in time (or left children)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None or group_members(self.proc.pid):
            self.kill()


class CeleryWorker(ManagedProcess):
    """`celery -A workers worker` with a name, a concurrency and its own environment."""

    def __init__(self, name: str, env: dict[str, str], concurrency: int = 2, queues: str | None = None):
        argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-l", "INFO", "-c", str(concurrency),
                "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        if queues:
            argv += ["-Q", queues]
        super().__init__(name, argv, env)
        self.node = f"{name}@{os.uname().nodename}"

    def start(self, ready_timeout_s: float = 60) -> CeleryWorker:
        super().start()
        control = Celery("fault-ping", broker=broker_url(self.env))
        try:
            deadline = time.monotonic() + ready_timeout_s
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"worker {self.name} exited early:\n{self.log_text()[-3000:]}")
                try:
                    if control.control.ping(destination=[self.node], timeout=1.0):
                        return self
                except Exception:  # the broker itself may be restarting: ask again
                    control.close()
                    control = Celery("fault-ping", broker=broker_url(self.env))
                    time.sleep(0.2)
            raise RuntimeError(f"worker {self.name} not ready after {ready_timeout_s}s; see {self.log_path}")
        finally:
            control.close()

    def pool_children(self) -> list[int]:
        return children_of(self.pid)

    def kill_pool_child(self) -> int | None:
        """SIGKILL one pool process (the main process notices and forks a replacement)."""
        children = self.pool_children()
        if not children:
            return None
        victim = random.choice(children)  # noqa: S311 - not cryptography
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return victim


class CeleryBeat(ManagedProcess):
    """`celery -A workers beat` with its own schedule file and pidfile."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO",
                "-s", str(workdir / f"{name}-schedule"), "--pidfile", str(workdir / f"{name}.pid")]
        super().__init__(name, argv, env)

    def start(self, ready_timeout_s: float = 30) -> CeleryBeat:
        super().start()
        wait_until(lambda: "beat: Starting" in self.log_text() or not self.running, ready_timeout_s,
                   f"beat {self.name} to start")
        if not self.running:
            raise RuntimeError(f"beat {self.name} exited early:\n{self.log_text()[-3000:]}")
        return self

    def sent(self, entry: str) -> int:
        """How many times this beat sent the schedule entry (its ticks)."""
        return self.log_text().count(f"Sending due task {entry} ")


def broker_url(env: dict[str, str]) -> str:
    return env.get("CELERY_BROKER_URL") or env["REDIS_URL"]


class ProcessSet:
    """Everything a test starts; `close()` (always called by the fixture) ends all of it."""

    def __init__(self, label: str, workdir: Path, env: dict[str, str]):
        self.label = label
        self.workdir = workdir
        self.env = env
        self.processes: list[ManagedProcess] = []

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**self.env, **extra}

    def worker(self, name: str, concurrency: int = 2, queues: str | None = None, **extra_env: str) -> CeleryWorker:
        process = CeleryWorker(f"{self.label}-{name}", self._env(extra_env), concurrency, queues)
        self.processes.append(process)
        return process.start()

    def beat(self, name: str = "beat", **extra_env: str) -> CeleryBeat:
        process = CeleryBeat(f"{self.label}-{name}", self._env(extra_env), self.workdir)
        self.processes.append(process)
        return process.start()

    def close(self) -> None:
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop(timeout_s=15)
            except Exception as exc:  # keep going: every process must be ended
                errors.append(f"{process.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


# --- private services -------------------------------------------------------------------------


class RedisServer:
    """A private, non-persistent redis-server: killing it loses every queued message."""

    def __init__(self, label: str, port: int | None = None):
        self.port = port or free_port()
        self.label = label
        self.process: ManagedProcess | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no"]
        self.process = ManagedProcess(f"{self.label}-redis", argv, dict(os.environ)).start()
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=1)

        def pong() -> bool:
            assert self.process is not None and self.process.running, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(pong, 20, f"redis-server on port {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self, down_s: float = 0.0) -> None:
        """Kill (queue content is lost: no persistence) and start again on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=10)


class PostgresCluster:
    """A private PostgreSQL cluster (initdb as `postgres`, trust auth) on a free port."""

    def __init__(self, label: str):
        assert PG_BIN is not None, private_services_missing()
        self.bin = PG_BIN
        self.label = label
        self.port = free_port()
        # initdb and postgres refuse to run as root: as root they run as `postgres`, which may
        # not enter the checkout (a clone under `mktemp -d` is root's alone) nor $TMPDIR. So
        # the data directory, the socket and the log all live in one fresh directory under
        # /tmp that `postgres` owns; the log is copied to test-artifacts/ by destroy().
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix=f"ingest-{label}-pg-", dir="/tmp" if self.as_postgres else None))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        if self.as_postgres:
            shutil.chown(self.base, "postgres", "postgres")

    def _run(self, *argv: str, timeout_s: float = 120) -> None:
        command = list(argv)
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd: pg_ctl and postgres change back to their starting directory, which must be
        # one they can enter (by default it is pytest's, the checkout).
        result = subprocess.run(command, cwd=self.base, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self.log}:\n{log}"
            )

    def url(self, dbname: str = "ingest") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> PostgresCluster:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        return self

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is terminated, the data is kept."""
        # -l again: without it the new postmaster would write to (and hold open) our pipe.
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        """Stop the server, keep its log as test-artifacts/<label>-postgres.log, remove the rest."""
        try:
            self.stop()
        finally:
            try:
                if self.log.exists():
                    ARTIFACTS.mkdir(exist_ok=True)
                    shutil.copyfile(self.log, ARTIFACTS / f"{self.label}-postgres.log")
            finally:
                shutil.rmtree(self.base, ignore_errors=True)


def producer_for(broker: str) -> Celery:
    """A producer app on an explicit broker (app.core.enqueue.producer() is cached with the env's)."""
    app = Celery("fault-producer")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker, result_backend=broker)
    return app


def queue_depth(redis_url: str) -> int:
    """Messages waiting in any of our queues or delivered and not yet acknowledged."""
    client = redis.Redis.from_url(redis_url)
    try:
        waiting = sum(int(client.llen(name)) for name in ("fetch", "normalize", "maintenance"))
        return waiting + int(client.hlen("unacked"))
    finally:
        client.close()


# --- upstream data ----------------------------------------------------------------------------


def post(i: int) -> dict[str, Any]:
    return {"id": i, "title": f"title {i}", "body": f"body of record {i}", "userId": i % 13}


def write_csv(path: Path, n: int) -> set[str]:
    """A CSV of n rows (ids 1..n); returns the upstream id set."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("id,title,body,n\n")
        for i in range(1, n + 1):
            out.write(f"{i},title {i},\"body, of {i}\",{i % 97}\n")
    return {str(i) for i in range(1, n + 1)}


class SlowPages:
    """A paginated JSON API (`?page=N&per_page=S`) that sleeps before every page.

    With `since_param`, only records whose id is past `since` are served, as an
    incremental API would. `pages_served` counts every page served; `requested` counts the
    requests for each page number as they arrive (a client killed mid-request asked too).
    """

    def __init__(self, records: list[dict[str, Any]], delay_s: float, since_param: str = "since"):
        self.records = records
        self.delay_s = delay_s
        self.since_param = since_param
        self.pages_served = 0
        self.requested: Counter[int] = Counter()

    def __call__(self, request: Request) -> Response:
        self.requested[int(request.query.get("page", 1))] += 1
        time.sleep(self.delay_s)
        self.pages_served += 1
        since = request.query.get(self.since_param)
        visible = [r for r in self.records if since is None or r["id"] > int(since)]
        size = int(request.query.get("per_page", 100))
        start = (int(request.query.get("page", 1)) - 1) * size
        return Response(200, json.dumps({"data": visible[start : start + size]}))


# --- oracles ----------------------------------------------------------------------------------


def scalar(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def stored_ids(conn: psycopg.Connection, source: str) -> list[str]:
    """Every stored external_id of the source, duplicates included (there must be none)."""
    return [row[0] for row in conn.execute("SELECT external_id FROM records WHERE source = %s", (source,))]


def assert_exact_records(conn: psycopg.Connection, source: str, expected: Iterable[str]) -> None:
    """Nothing lost, nothing duplicated, nothing extra: the table holds exactly the upstream ids."""
    ids = stored_ids(conn, source)
    expected_set = set(expected)
    duplicated = len(ids) - len(set(ids))
    missing = expected_set - set(ids)
    extra = set(ids) - expected_set
    assert (duplicated, len(missing), len(extra)) == (0, 0, 0), (
        f"{source}: {duplicated} duplicated, {len(missing)} missing (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} unexpected (e.g. {sorted(extra)[:5]})"
    )


def assert_counts(run: dict[str, Any], upstream: int, **exact: int) -> None:
    """fetched = inserted + updated + unchanged + rejected = upstream size (and any exact counts)."""
    parts = {key: run[key] for key in ("inserted", "updated", "unchanged", "rejected")}
    assert run["fetched"] == sum(parts.values()) == upstream, f"counts do not add up to {upstream}: {run}"
    for key, value in exact.items():
        assert run[key] == value, f"{key} = {run[key]}, expected {value}: {run}"


def ledger_totals(conn: psycopg.Connection, run_id: int) -> dict[str, int]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT count(*) AS chunks, coalesce(sum(fetched), 0) AS fetched, coalesce(sum(inserted), 0) AS inserted,"
            " coalesce(sum(updated), 0) AS updated, coalesce(sum(unchanged), 0) AS unchanged,"
            " coalesce(sum(rejected), 0) AS rejected FROM chunk_ledger WHERE run_id = %s",
            (run_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return {key: int(value) for key, value in row.items()}


def deliveries(conn: psycopg.Connection, run_id: int) -> tuple[int, int]:
    """(fetch attempts, chunk deliveries) the database counted for a run."""
    fetches = conn.execute("SELECT fetch_attempts FROM runs WHERE id = %s", (run_id,)).fetchone()
    chunks = conn.execute("SELECT coalesce(sum(attempts), 0) FROM raw_chunks WHERE run_id = %s", (run_id,)).fetchone()
    assert fetches is not None and chunks is not None
    return int(fetches[0]), int(chunks[0])
