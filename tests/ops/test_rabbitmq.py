"""The RabbitMQ switch: with CELERY_BROKER_URL=amqp://..., one full ingestion through a
real worker and `python -m app.cli run SOURCE --wait`, exactly as with Redis.

RabbitMQ must answer on 127.0.0.1:5672 (`.ci/run` starts it with `rabbitmq-server
-detached`). The test works in a private vhost created with rabbitmqctl, deleted at the
end; where rabbitmqctl cannot be used, it uses the default vhost and purges the queues.
TEST_AMQP_BASE (default amqp://guest:guest@127.0.0.1:5672) changes the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest
from celery import Celery

from app.core.run_status import RunStatus
from app.observability.queue_depth import amqp_queue_depths
from celeryconfig import QUEUES
from tests.conftest import ROOT, WorkerProcess
from tests.support.pipeline import records

AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
SOURCE = "rmq_items"
ROWS = 35  # chunk_size 10: 4 chunks, plus one row without an id (rejected)


def _rabbitmqctl(*args: str) -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A broker URL on a private vhost (or the purged default vhost)."""
    parts = urlsplit(AMQP_BASE)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(
            f"RabbitMQ does not answer on {host}:{port} ({exc}). Start it with `rabbitmq-server -detached` "
            "(.ci/run does), or point TEST_AMQP_BASE at a running server.",
            pytrace=False,
        )
    vhost = f"ingest_test_{os.getpid()}"
    user = parts.username or "guest"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        yield f"{AMQP_BASE}/{vhost}"
        _rabbitmqctl("delete_vhost", vhost)
        return
    url = f"{AMQP_BASE}//"
    purge = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "purge", "-f"],
        cwd=ROOT,
        env={**os.environ, "CELERY_BROKER_URL": url},
        capture_output=True,
        timeout=60,
    )
    assert purge.returncode == 0, purge.stderr.decode()[-2000:]
    yield url


class AmqpWorker(WorkerProcess):
    """A worker on the AMQP broker: readiness is a ping over that broker (the shared
    WorkerProcess pings through the Redis producer)."""

    def _wait_ready(self, timeout_s: float = 60) -> None:
        probe = Celery("amqp-probe")
        probe.config_from_object("celeryconfig")
        probe.conf.broker_url = self.env["CELERY_BROKER_URL"]
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited early; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
                    )
                if probe.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=1.0):
                    return
            raise RuntimeError(f"worker not ready after {timeout_s}s; see {self.log_path}")
        finally:
            probe.close()


def test_full_ingestion_over_rabbitmq(
    db: psycopg.Connection,
    amqp_url: str,
    tmp_path: Path,
    session_worker_stopped: Callable[[], AbstractContextManager[None]],
) -> None:
    (tmp_path / "items.csv").write_text(
        "id,name,score\n" + "".join(f"{i},item {i},{i * 3}\n" for i in range(1, ROWS + 1)) + ",no id,0\n"
    )
    sources_file = tmp_path / "sources.toml"
    sources_file.write_text(
        f'[sources.{SOURCE}]\nkind = "csv"\nurl = "items.csv"\nid_field = "id"\nchunk_size = 10\n'
        f'schedule = "every 1h"\n\n[sources.{SOURCE}.types]\nscore = "int"\n'
    )
    env = {"CELERY_BROKER_URL": amqp_url, "SOURCES_FILE": str(sources_file)}
    worker = AmqpWorker(f"amqp-{os.getpid()}", extra_env=env)
    # A Redis worker could not take these messages anyway; stopping it makes sure that the
    # records below can only have come through RabbitMQ.
    with session_worker_stopped():
        worker.start()
        try:
            cli = subprocess.run(
                [sys.executable, "-m", "app.cli", "run", SOURCE, "--wait", "--timeout", "120"],
                cwd=ROOT,
                env={**worker.env},
                capture_output=True,
                timeout=180,
            )
        finally:
            worker.stop()
    output = (cli.stdout + cli.stderr).decode()
    assert cli.returncode == 0, output

    run = db.execute(
        "SELECT id, status, trigger, fetched, inserted, updated, unchanged, rejected, chunks_total FROM runs"
        " WHERE source = %s",
        (SOURCE,),
    ).fetchall()
    assert len(run) == 1, run
    run_id, *summary = run[0]
    assert tuple(summary) == (RunStatus.PARTIAL, "cli", ROWS + 1, ROWS, 0, 0, 1, 4)
    stored = records(db, SOURCE)
    assert set(stored) == {str(i) for i in range(1, ROWS + 1)}
    assert stored["7"]["data"] == {"id": "7", "name": "item 7", "score": 21}
    assert db.execute("SELECT records, rejected FROM source_stats WHERE source = %s", (SOURCE,)).fetchone() == (ROWS, 1)
    rejected = db.execute("SELECT reason FROM rejected_records WHERE run_id = %s", (run_id,)).fetchall()
    assert rejected == [("missing_id",)]

    log = worker.log_path.read_text()
    assert "amqp://" in log, "the worker did not connect to RabbitMQ"
    assert log.count("workers.tasks.normalize_and_upsert[") >= 4 and "workers.tasks.fetch_source[" in log
    # The API reads queue depths from RabbitMQ (passive declare): every queue exists and is empty.
    assert anyio.run(lambda: amqp_queue_depths(amqp_url, queues=QUEUES)) == dict.fromkeys(QUEUES, 0)
