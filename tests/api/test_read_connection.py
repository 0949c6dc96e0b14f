"""Read-only routes run on the autocommit read pool, which does not ping connections at
checkout: a connection killed under it (PostgreSQL restarted) may cost one 503, never a
500, and the pool recovers by itself."""

from __future__ import annotations

import pytest

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
