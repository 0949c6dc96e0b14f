"""Read-only routes run on the autocommit read pool, which does not ping connections at
checkout: a connection killed under it (PostgreSQL restarted) may cost one 503, never a
500, and the pool recovers by itself."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from app.db import session
from tests.api.conftest import assert_error, insert_records

READ_ROUTES = ["/data", "/stats", "/runs", "/sources", "/rejects", "/drift"]


def kill_api_connections(db) -> int:
    """Terminate every API connection to the test database, as a server restart would."""
    return db.execute(
        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'ingest-api' AND pid <> pg_backend_pid()"""
    ).fetchone()[0]


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_read_after_connections_were_killed_is_503_at_worst_then_recovers(client, db, path):
    insert_records(db, [{"source": "posts", "external_id": "1", "title": "one"}])
    assert (await client.get(path)).status_code == 200
    assert kill_api_connections(db) >= 1
    first = await client.get(path)
    if first.status_code != 200:
        assert "database" in assert_error(first, 503, "unavailable")["message"]
    for _ in range(3):
        assert (await client.get(path)).status_code == 200


async def test_reads_leave_no_transaction_open(client, db):
    insert_records(db, [{"source": "posts", "external_id": "1", "title": "one"}])
    for path in READ_ROUTES:
        assert (await client.get(path)).status_code == 200
    states = db.execute(
        """SELECT state FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'ingest-api'"""
    ).fetchall()
    assert states and all(state == "idle" for (state,) in states)


async def test_read_with_database_down_is_503(make_client):
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    for path in READ_ROUTES:
        assert "database" in assert_error(await client.get(path), 503, "unavailable")["message"]


def api_connections(db) -> int:
    return db.execute(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'ingest-api'"""
    ).fetchone()[0]


@pytest.mark.parametrize("path", ["/data", "/stats"])
async def test_killed_pool_costs_one_503_not_one_per_connection(client, db, path):
    """/data and /stats run their statement on the driver connection (app.db.session.fetch):
    a dead connection found there still invalidates the whole pool, as SQLAlchemy does."""
    insert_records(db, [{"source": "posts", "external_id": "1", "title": "one"}])
    responses = await asyncio.gather(*(client.get(path) for _ in range(6)))  # several pooled connections
    assert all(response.status_code == 200 for response in responses)
    assert api_connections(db) >= 3
    assert kill_api_connections(db) >= 3
    statuses = [(await client.get(path)).status_code for _ in range(6)]
    assert statuses[1:] == [200] * 5, statuses
    assert statuses[0] in (200, 503), statuses


@pytest.mark.parametrize(("path", "table"), [("/data", "records"), ("/data?q=one", "records"), ("/stats", "runs")])
async def test_statement_timeout_is_503_query_timeout_and_the_connection_stays_usable(
    make_client, db, database, monkeypatch, path, table
):
    monkeypatch.setattr(session, "STATEMENT_TIMEOUT_MS", 300)
    client = await make_client()
    insert_records(db, [{"source": "posts", "external_id": "1", "title": "one"}])
    with psycopg.connect(database) as locker:  # holds the lock until the block ends
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        assert_error(await client.get(path), 503, "query_timeout")
    assert (await client.get(path)).status_code == 200
