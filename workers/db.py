"""One psycopg connection per worker process, opened lazily in the pool child.

The parent process never opens it, so forked children do not share a socket.
A broken connection (database restarted) is replaced on the next use.
"""

from __future__ import annotations

import psycopg

from app.settings import get_settings

_conn: psycopg.Connection | None = None


def connection() -> psycopg.Connection:
    global _conn
    if _conn is None or _conn.closed or _conn.broken:
        _conn = psycopg.connect(get_settings().libpq_url, connect_timeout=10, application_name="ingest-worker")
    elif _conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        _conn.rollback()  # a task that died mid-transaction must not leak its state
    return _conn


def reset() -> None:
    global _conn
    if _conn is not None:
        try:
            _conn.close()
        finally:
            _conn = None
