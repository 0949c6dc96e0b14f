"""Flower (`celery -A workers flower`): basic auth from FLOWER_BASIC_AUTH, and it sees the
real worker and the pipeline's tasks with their names and arguments.

A real Flower process is started on the test broker before an ingestion runs through
the session worker (Flower learns tasks from events, so it must be listening first).
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.conftest import ARTIFACTS, ROOT, WorkerProcess
from tests.support.pipeline import ingest, source

FETCH, CHUNK = "workers.tasks.fetch_source", "workers.tasks.normalize_and_upsert"
USER, PASSWORD = "ops", "s3cret:with-colon"
AUTH = (USER, PASSWORD)
TIMEOUT_S = 60


def args(task: dict[str, Any]) -> list[Any]:
    """A task's positional arguments from Flower's text form ("[7]" or "(7, 2)")."""
    try:
        return list(ast.literal_eval(task.get("args") or "()"))
    except (ValueError, SyntaxError):
        return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(what: str, probe: Callable[[], Any], timeout_s: float = TIMEOUT_S) -> Any:
    """Call probe until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"Flower: {what} not seen within {timeout_s}s (last answer: {last!r})")


class Flower:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str, auth: tuple[str, str] | None = AUTH, **params: Any) -> httpx.Response:
        if self.proc.poll() is not None:
            tail = self.log.read_text()[-3000:]
            raise AssertionError(f"Flower exited ({self.proc.returncode}); see {self.log}:\n{tail}")
        return httpx.get(f"{self.url}{path}", auth=auth, params=params, timeout=10)


@pytest.fixture
def flower(worker: WorkerProcess) -> Iterator[Flower]:
    """Flower on a free port, basic auth from the environment, already receiving events."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "flower.log"
    env = {**os.environ, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = Flower(proc, f"http://127.0.0.1:{port}", log_path)
    try:

        def healthy() -> bool:
            try:
                return app.get("/healthcheck", auth=None).status_code == 200
            except httpx.TransportError:
                return False

        poll("/healthcheck", healthy)
        # Heartbeat events from the session worker: Flower's event receiver is listening.
        worker_name = f"{worker.name}@{os.uname().nodename}"
        poll(f"heartbeats of {worker_name}", lambda: app.get("/api/workers", status="true").json().get(worker_name))
        yield app
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_requires_basic_auth_from_the_environment(flower: Flower) -> None:
    for path in ("/api/workers", "/api/tasks", "/"):
        assert flower.get(path, auth=None).status_code == 401, path
        assert flower.get(path, auth=(USER, "wrong")).status_code == 401, path
        assert flower.get(path, auth=("someone", PASSWORD)).status_code == 401, path
    # The UI asks the browser for credentials (Flower's API handlers answer a bare 401).
    assert flower.get("/", auth=None).headers["www-authenticate"].startswith("Basic")
    assert flower.get("/api/workers").status_code == 200


def test_flower_sees_the_worker_and_the_pipeline_tasks(
    flower: Flower, worker: WorkerProcess, db: psycopg.Connection, tmp_path: Path
) -> None:
    worker_name = f"{worker.name}@{os.uname().nodename}"
    workers = poll("the worker via inspect", lambda: flower.get("/api/workers", refresh="true").json().get(worker_name))
    assert {"workers.tasks.fetch_source", "workers.tasks.normalize_and_upsert"} <= set(workers["registered"])

    path = tmp_path / "flowered.csv"
    path.write_text("id,name\n" + "".join(f"{i},name {i}\n" for i in range(1, 8)))
    run = ingest(db, source("flowered", "csv", str(path), chunk_size=3))
    assert (run["status"], run["inserted"], run["chunks_total"]) == (RunStatus.SUCCEEDED, 7, 3)
    run_id = run["id"]

    def tasks_of_run() -> dict[str, list[dict[str, Any]]] | None:
        """The run's succeeded tasks by name, once the fetch and all 3 chunks are there."""
        seen: dict[str, list[dict[str, Any]]] = {}
        for task in flower.get("/api/tasks").json().values():
            # Flower shows the arguments as the worker's repr of them: "[7]", "(7, 2)".
            if task.get("state") == "SUCCESS" and task.get("worker") == worker_name and args(task)[:1] == [run_id]:
                seen.setdefault(task["name"], []).append(task)
        done = len(seen.get(FETCH, [])) == 1 and len(seen.get(CHUNK, [])) == 3
        return seen if done else None

    seen = poll(f"the tasks of run {run_id}", tasks_of_run)
    assert sorted(args(task) for task in seen[CHUNK]) == [[run_id, n] for n in range(3)]
    fetch = seen[FETCH][0]
    assert (args(fetch), fetch["kwargs"]) == ([run_id], "{}")
    assert fetch["received"] and fetch["started"] and fetch[RunStatus.SUCCEEDED]
    assert {task["parent_id"] for task in seen[CHUNK]} == {fetch["uuid"]}  # fanned out by the fetch
    # One task by id, as the UI's task page shows it.
    detail = flower.get(f"/api/task/info/{fetch['uuid']}").json()
    assert (detail["name"], args(detail), detail["state"]) == (FETCH, [run_id], "SUCCESS")
