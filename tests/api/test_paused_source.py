"""A source paused by schema drift (on_drift = "pause") refuses new runs until resumed."""

from __future__ import annotations

import psycopg

from tests.api.conftest import AUTH, assert_error


async def test_post_runs_on_a_paused_source_is_409_naming_the_reason(client, db: psycopg.Connection) -> None:
    db.execute(
        "INSERT INTO sources (name, kind, enabled, schedule, config, paused_reason)"
        " VALUES ('posts', 'http_json', true, 'every 15m', '{}', 'schema drift: added color')"
    )
    error = assert_error(await client.post("/runs", json={"sources": ["posts"]}, headers=AUTH), 409, "source_paused")
    assert "schema drift: added color" in error["message"] and "resume" in error["message"]
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    listed = (await client.get("/sources")).json()["sources"]
    assert next(s for s in listed if s["name"] == "posts")["paused_reason"] == "schema drift: added color"

    db.execute("UPDATE sources SET paused_reason = NULL WHERE name = 'posts'")
    assert (await client.post("/runs", json={"sources": ["posts"]}, headers=AUTH)).status_code == 202
