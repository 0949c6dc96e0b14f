"""A heartbeat per worker process, so that the work of a dead worker is re-driven in seconds.

A worker killed whole (SIGKILL, OOM, a lost machine) cannot hand back what it held: with
Redis, its unacknowledged messages come back only after the visibility timeout
(2 x TASK_TIMEOUT_S + 60 s), and the reconciler's age rule re-drives them after
TASK_TIMEOUT_S. Minutes of a run standing still, for a death that is certain within
seconds.

So every process that runs tasks beats in `worker_processes` every BEAT_EVERY_S, from a
daemon thread on its own connection, and names itself on what it takes: a fetch lease
(`runs.fetch_holder`), a chunk delivery (`raw_chunks.claimed_by`). A process whose beat is
older than DEAD_AFTER_S is dead: the reconciler re-drives its work at once
(workers/pipeline/reconcile.py). The thread beats while the process lives, however long its
task (a slow upstream, a big chunk); a task that hangs forever is ended by the hard time
limit, which ends the process too. Taking the work of a process that is merely slow to beat
is harmless: every stage is idempotent, and the fetch lease fences the slower task out.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import psycopg
import structlog

from app.settings import get_settings

log = structlog.get_logger(__name__)

BEAT_EVERY_S = 5.0
# Three beats missed: a process this silent is dead (or so stalled that its work is better redone).
DEAD_AFTER_S = 3 * BEAT_EVERY_S
# Rows of processes gone for this long are deleted by the reconciler.
FORGET_AFTER_S = 24 * 3600

_BEAT = """
INSERT INTO worker_processes (id, hostname, pid) VALUES (%(id)s, %(hostname)s, %(pid)s)
ON CONFLICT (id) DO UPDATE SET beat_at = now()
"""

# SQL for "the process `holder` names is alive"; a NULL holder (an older release, or a
# delivery not yet claimed) is never taken for dead.
HOLDER_DEAD_SQL = """
NOT EXISTS (SELECT 1 FROM worker_processes w WHERE w.id = {holder}
            AND w.beat_at > now() - make_interval(secs => {dead_after}))
"""


class _Heartbeat:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.id = uuid.uuid4()
        self._stop = threading.Event()
        self._beaten = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # The first beat lands before the first claim names this process, so that the
        # reconciler never finds a holder it has not heard of.
        self._beaten.wait(timeout=10)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        params = {"id": self.id, "hostname": socket.gethostname(), "pid": self.pid}
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(get_settings().libpq_url, autocommit=True, connect_timeout=10,
                                           application_name="ingest-heartbeat")
                conn.execute(_BEAT, params)
                self._beaten.set()
            except psycopg.Error as exc:  # the database restarting: beat again on a new connection
                log.warning("heartbeat_failed", error=str(exc))
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(BEAT_EVERY_S)


_current: _Heartbeat | None = None
_lock = threading.Lock()


def process_id() -> uuid.UUID:
    """This process's id in worker_processes, its heartbeat started on first use (and again
    in a child forked from a process that had one: threads do not survive a fork)."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Heartbeat()
            _current.start()
        return _current.id
