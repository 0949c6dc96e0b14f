"""Fixtures for the fault-injection tests: our own workers and beat, never the session's.

The session `worker` (tests/conftest.py) consumes the same test broker and would take
the tasks of the workers these tests kill; it is stopped for this package and started
again afterwards. Every process a test starts is ended when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from app.core.enqueue import producer
from tests.support.faults import TASK_TIMEOUT_S, ProcessSet
from tests.support.http_server import LocalHTTPServer


@pytest.fixture(scope="package", autouse=True)
def own_workers_only(session_worker_stopped: Callable[[], AbstractContextManager[None]]) -> Iterator[None]:
    with session_worker_stopped():
        strangers = producer().control.ping(timeout=1.0)
        if strangers:
            pytest.fail(
                f"other Celery workers consume the test broker {os.environ['REDIS_URL']}: {strangers}; "
                "they would take the tasks of the workers these tests kill (set TEST_REDIS_DB to a free db)"
            )
        yield


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessSet]:
    """Start workers/beat with `procs.worker(name)` / `procs.beat()`; TASK_TIMEOUT_S is short."""
    label = f"rel{os.getpid()}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    env = {**os.environ, "TASK_TIMEOUT_S": str(TASK_TIMEOUT_S)}
    processes = ProcessSet(label, tmp_path / "procs", env)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def http() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer() as server:
        yield server
