"""Secrets from ${VAR} headers never reach the database, the worker logs or run errors."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.conftest import ARTIFACTS
from tests.support.http_server import LocalHTTPServer, Request, Response
from tests.support.pipeline import ingest, source

pytestmark = pytest.mark.usefixtures("worker")

TOKEN = os.environ["TEST_SOURCE_TOKEN"]


def database_text(db: psycopg.Connection) -> str:
    """Every row of every table as text: what a leaked secret would be stored in."""
    tables = [row[0] for row in db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
    dump = []
    for table in tables:
        dump.extend(str(row) for row in db.execute(f'SELECT t::text FROM "{table}" t').fetchall())
    return "\n".join(dump)


def test_header_secret_is_used_upstream_but_never_stored_or_logged(db: psycopg.Connection) -> None:
    seen_auth: list[str | None] = []

    def handler(request: Request) -> Response:
        seen_auth.append(request.headers.get("authorization"))
        if request.query.get("fail"):  # an upstream that echoes the credentials back in its error
            return Response(403, json.dumps({"error": f"bad token {request.headers.get('authorization')}"}))
        return Response(200, json.dumps([{"id": 1, "title": "ok"}]))

    with LocalHTTPServer() as server:
        server.route("/secure", handler)
        headers = {"Authorization": "Bearer ${TEST_SOURCE_TOKEN}"}
        good = ingest(db, source("secure", "http_json", f"{server.url}/secure", headers=headers))
        bad = ingest(db, source("secure-bad", "http_json", f"{server.url}/secure?fail=1", headers=headers))

    assert seen_auth[0] == f"Bearer {TOKEN}"  # the secret was really sent upstream
    assert good["status"] == RunStatus.SUCCEEDED
    assert bad["status"] == RunStatus.FAILED and "403" in bad["error"]
    assert TOKEN not in bad["error"]
    stored = database_text(db)
    assert "${TEST_SOURCE_TOKEN}" in stored  # the reference is kept, so runs are reproducible
    assert TOKEN not in stored
    for log in ARTIFACTS.glob("worker-*.log"):
        assert TOKEN not in log.read_text(errors="replace"), f"secret leaked into {log.name}"
