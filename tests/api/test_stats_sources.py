"""GET /stats, /sources, /rejects and /drift."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import orjson

from app.api.schemas import Stats
from app.core.enqueue import FETCH_TASK, producer
from app.core.run_status import RunStatus
from tests.api.conftest import assert_error, insert_records, insert_run


def send_without_consumer(task: str, args: list[int], **options: object) -> None:
    producer().send_task(task, args=args, **options)


async def no_worker_listening() -> bool:
    replies = await anyio.to_thread.run_sync(lambda: producer().control.ping(timeout=0.3))
    return not replies


async def test_stats_shape_and_counts(client, db):
    insert_records(db, [{"source": "posts", "external_id": str(i)} for i in range(3)])
    insert_records(db, [{"source": "news", "external_id": "n"}])
    db.execute("UPDATE source_stats SET rejected = 2 WHERE source = 'posts'")
    older = insert_run(db, "posts", RunStatus.SUCCEEDED)
    newest = insert_run(db, "posts", RunStatus.PARTIAL)
    insert_run(db, "news", RunStatus.FAILED, error="boom")
    insert_run(db, "news", RunStatus.QUEUED)
    db.execute(
        "INSERT INTO drift_events (source, run_id, kind, field, new_type) VALUES ('posts', %s, 'added', 'x', 'int')",
        (older,),
    )

    response = await client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"records", "runs", "queues", "rejected", "drift_events"}
    assert body["records"] == {"total": 4, "by_source": {"news": 1, "posts": 3}}
    assert list(body["records"]["by_source"]) == ["news", "posts"]  # in source order
    assert set(body["runs"]) == {"total", "by_status", "last_by_source"}
    assert body["runs"]["total"] == 4
    assert body["runs"]["by_status"] == {
        RunStatus.QUEUED: 1, RunStatus.RUNNING: 0, RunStatus.SUCCEEDED: 1, RunStatus.PARTIAL: 1, RunStatus.FAILED: 1,
        RunStatus.CANCELLED: 0,
    }
    assert body["runs"]["last_by_source"]["posts"]["id"] == newest
    assert body["runs"]["last_by_source"]["news"]["status"] == RunStatus.QUEUED
    assert set(body["queues"]) == {"fetch", "normalize", "maintenance"}
    assert body["rejected"] == 2 and body["drift_events"] == 1


async def test_stats_last_run_of_configured_sources_in_order_then_of_other_counted_sources(client, db):
    insert_records(db, [{"source": "zz_retired", "external_id": "1"}, {"source": "news", "external_id": "1"}])
    insert_records(db, [{"source": "aa_retired", "external_id": "1"}])
    runs = {
        source: insert_run(db, source, RunStatus.SUCCEEDED) for source in ("zz_retired", "news", "aa_retired", "posts")
    }
    newest_posts = insert_run(db, "posts", RunStatus.FAILED, error="boom")
    insert_run(db, "not_counted", RunStatus.SUCCEEDED)  # neither configured nor in source_stats
    body = (await client.get("/stats")).json()
    last = body["runs"]["last_by_source"]
    # sources.test.toml order (posts, passengers, news, orders), then the others in source order
    assert list(last) == ["posts", "news", "aa_retired", "zz_retired"]
    assert last["posts"]["id"] == newest_posts and last["posts"]["error"] == "boom"
    assert {name: run["id"] for name, run in last.items() if name != "posts"} == {
        name: runs[name] for name in ("news", "aa_retired", "zz_retired")
    }
    assert set(last["news"]) == {
        "id", "source", "trigger", "status", "created_at", "started_at", "finished_at", "counts", "error"
    }
    assert body["records"]["by_source"] == {"aa_retired": 1, "news": 1, "zz_retired": 1}
    assert body["runs"]["total"] == 6 and body["runs"]["by_status"][RunStatus.SUCCEEDED] == 5


async def test_stats_reads_exactly_as_its_response_model_renders_it(client, db):
    insert_records(db, [{"source": "posts", "external_id": "1"}, {"source": "zz_other", "external_id": "1"}])
    whole_second = datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC)
    insert_run(db, "posts", RunStatus.FAILED, error='quote " and ünïcode', created_at=whole_second,
               started_at=whole_second,
               finished_at=whole_second.replace(microsecond=120000), fetched=3, inserted=1, updated=1, rejected=1)
    insert_run(db, "news", RunStatus.QUEUED, created_at=datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    insert_run(db, "zz_other", RunStatus.SUCCEEDED)
    for body in ((await client.get("/stats")).content, (await client.get("/stats")).content):
        rendered_by_model = orjson.dumps(Stats.model_validate(orjson.loads(body)).model_dump(mode="json"))
        assert body == rendered_by_model
    stats = orjson.loads(body)
    assert list(stats) == ["records", "runs", "queues", "rejected", "drift_events"]
    posts = stats["runs"]["last_by_source"]["posts"]
    assert posts["created_at"] == "2026-05-01T08:00:00Z" and posts["finished_at"] == "2026-05-01T08:00:00.120000Z"
    assert stats["runs"]["last_by_source"]["news"]["started_at"] is None
    assert posts["counts"] == {"fetched": 3, "inserted": 1, "updated": 1, "unchanged": 0, "rejected": 1}


async def test_stats_of_an_empty_database(client, db):
    body = (await client.get("/stats")).json()
    assert body["records"] == {"total": 0, "by_source": {}}
    assert body["runs"]["by_status"] == dict.fromkeys(RunStatus, 0)
    assert body["runs"]["total"] == 0 and body["rejected"] == 0 and body["drift_events"] == 0


async def test_queue_depth_counts_messages_waiting_in_redis(idle_broker, client, db):
    assert await no_worker_listening()
    assert (await client.get("/stats")).json()["queues"] == {"fetch": 0, "normalize": 0, "maintenance": 0}
    await anyio.to_thread.run_sync(send_without_consumer, FETCH_TASK, [101])
    await anyio.to_thread.run_sync(send_without_consumer, FETCH_TASK, [102])
    # A prioritised message lands in one of kombu's priority sub-lists; it waits all the same.
    await anyio.to_thread.run_sync(lambda: send_without_consumer(FETCH_TASK, [103], priority=5))
    await anyio.to_thread.run_sync(lambda: send_without_consumer("workers.tasks.reconcile", []))
    queues = (await client.get("/stats")).json()["queues"]
    assert queues == {"fetch": 3, "normalize": 0, "maintenance": 1}


async def test_queue_depth_is_null_when_the_broker_cannot_say(make_client, db):
    client = await make_client(celery_broker_url="redis://127.0.0.1:1/0")
    body = (await client.get("/stats")).json()
    assert body["queues"] == {"fetch": None, "normalize": None, "maintenance": None}


async def test_sources_lists_every_configured_source_with_state(client, db):
    run_id = insert_run(db, "posts", RunStatus.SUCCEEDED)
    db.execute(
        "INSERT INTO checkpoints (source, value, run_id) VALUES ('posts', %s::jsonb, %s)",
        (orjson.dumps(100).decode(), run_id),
    )
    response = await client.get("/sources")
    assert response.status_code == 200
    sources = {source["name"]: source for source in response.json()["sources"]}
    assert list(sources) == ["posts", "passengers", "news", "orders"]
    posts = sources["posts"]
    assert set(posts) == {"name", "kind", "schedule", "enabled", "paused_reason", "checkpoint", "last_run"}
    assert posts["kind"] == "http_json" and posts["schedule"] == "every 15m" and posts["enabled"] is True
    assert posts["checkpoint"] == 100 and posts["last_run"]["id"] == run_id
    assert sources["news"]["checkpoint"] is None and sources["news"]["last_run"] is None
    assert sources["orders"]["kind"] == "webhook"
    assert "headers" not in response.text and "url" not in response.text


async def test_rejects_filtered_by_source_and_run(client, db):
    run_a = insert_run(db, "passengers", RunStatus.PARTIAL)
    run_b = insert_run(db, "posts", RunStatus.PARTIAL)
    for run_id, source, line in ((run_a, "passengers", 4), (run_a, "passengers", 9), (run_b, "posts", None)):
        db.execute(
            """INSERT INTO rejected_records (run_id, source, chunk_no, line_no, reason, field, message, raw)
               VALUES (%s, %s, 0, %s, 'coercion_failed', 'Age', 'not a float: ''abc''', %s::jsonb)""",
            (run_id, source, line, orjson.dumps({"Age": "abc", "line": line}).decode()),
        )
    items = (await client.get("/rejects")).json()["items"]
    assert len(items) == 3 and items[0]["source"] == "posts"  # newest first
    item = items[-1]
    assert set(item) == {
        "id",
        "run_id",
        "source",
        "chunk_no",
        "line_no",
        "external_id",
        "reason",
        "field",
        "message",
        "raw",
        "created_at",
    }
    assert item["raw"] == {"Age": "abc", "line": 4} and item["reason"] == "coercion_failed" and item["field"] == "Age"
    assert len((await client.get("/rejects", params={"source": "passengers"})).json()["items"]) == 2
    assert len((await client.get("/rejects", params={"run_id": run_b})).json()["items"]) == 1
    assert len((await client.get("/rejects", params={"limit": 1})).json()["items"]) == 1
    assert "query parameter 'run_id'" in assert_error(await client.get("/rejects?run_id=x"), 422)["message"]


async def test_drift_events(client, db):
    run_id = insert_run(db, "posts", RunStatus.SUCCEEDED)
    db.execute(
        """INSERT INTO drift_events (source, run_id, kind, field, old_type, new_type) VALUES
           ('posts', %s, 'added', 'tags', NULL, 'list'), ('posts', %s, 'type_changed', 'id', 'int', 'str'),
           ('news', NULL, 'removed', 'author', 'str', NULL)""",
        (run_id, run_id),
    )
    items = (await client.get("/drift")).json()["items"]
    assert [item["kind"] for item in items] == ["removed", "type_changed", "added"]
    posts = (await client.get("/drift", params={"source": "posts"})).json()["items"]
    assert {(i["field"], i["old_type"], i["new_type"], i["run_id"]) for i in posts} == {
        ("tags", None, "list", run_id),
        ("id", "int", "str", run_id),
    }
