"""GET /data and GET /data/{id}: bounds, keyset walks, filters, totals, hostile input."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from app.api.routes import data as data_module
from tests.api.conftest import assert_error, insert_records

RECORD_KEYS = {
    "id",
    "source",
    "external_id",
    "title",
    "content",
    "author",
    "url",
    "published_at",
    "data",
    "content_hash",
    "first_seen_at",
    "updated_at",
}
PAGE_KEYS = {"items", "page", "page_size", "total", "total_is_estimate", "next_cursor", "meta"}


def seed(db: psycopg.Connection, per_source: dict[str, int]) -> list[int]:
    rows = [
        {"source": source, "external_id": f"{source}-{i}", "title": f"{source} item {i}", "content": "lorem ipsum"}
        for source, count in per_source.items()
        for i in range(count)
    ]
    return insert_records(db, rows)


async def walk(client: httpx.AsyncClient, params: dict[str, object], page_size: int = 4) -> list[int]:
    """Follow next_cursor from the first page to the end; return every id seen, in order."""
    seen: list[int] = []
    response = await client.get("/data", params={**params, "page_size": page_size})
    for _ in range(1000):
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            return seen
        response = await client.get("/data", params={**params, "page_size": page_size, "cursor": body["next_cursor"]})
    raise AssertionError("cursor walk did not end")


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": "abc"}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": "abc"}, "page_size"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
    ],
)
async def test_out_of_range_parameters_are_422_naming_the_parameter(client, params, name):
    error = assert_error(await client.get("/data", params=params), 422, "validation_error")
    assert f"query parameter '{name}'" in error["message"]


async def test_page_size_bounds_are_inclusive(client, db):
    seed(db, {"posts": 3})
    for size in (1, 500):
        response = await client.get("/data", params={"page_size": size})
        assert response.status_code == 200
        assert response.json()["page_size"] == size


async def test_response_shape_and_record_fields(client, db):
    seed(db, {"posts": 2})
    response = await client.get("/data", headers={"X-Request-ID": "shape-check-1"})
    body = response.json()
    assert set(body) == PAGE_KEYS
    assert set(body["meta"]) == {"request_id", "latency_ms"}
    assert body["meta"]["request_id"] == "shape-check-1"
    assert isinstance(body["meta"]["latency_ms"], float)
    assert body["page"] == 1 and body["page_size"] == 50 and body["total"] == 2
    assert body["total_is_estimate"] is False and body["next_cursor"] is None
    item = body["items"][0]
    assert set(item) == RECORD_KEYS
    assert len(item["content_hash"]) == 64 and int(item["content_hash"], 16) >= 0
    assert item["data"] == {"external_id": "posts-0"}


async def test_default_order_is_id_ascending_and_pages_partition(client, db):
    ids = seed(db, {"posts": 7, "news": 5})
    pages = []
    for page in (1, 2, 3, 4):
        body = (await client.get("/data", params={"page": page, "page_size": 4})).json()
        assert body["page"] == page
        pages.append([item["id"] for item in body["items"]])
    assert pages[0] + pages[1] + pages[2] == sorted(ids)
    assert pages[3] == []


async def test_walking_next_cursor_visits_every_record_exactly_once(client, db):
    ids = seed(db, {"posts": 9, "news": 6, "passengers": 8})
    seen = await walk(client, {})
    assert seen == sorted(ids)


async def test_cursor_walk_with_repeated_source_filter(client, db):
    seed(db, {"posts": 9, "news": 6, "passengers": 8})
    seen = await walk(client, {"source": ["posts", "passengers"]}, page_size=5)
    rows = db.execute("SELECT id FROM records WHERE source IN ('posts', 'passengers') ORDER BY id").fetchall()
    assert seen == [row[0] for row in rows] and len(seen) == 17
    body = (await client.get("/data", params={"source": ["posts", "passengers"]})).json()
    assert body["total"] == 17 and {item["source"] for item in body["items"]} == {"posts", "passengers"}


async def test_cursor_walk_with_full_text_filter(client, db):
    rows = [{"source": "posts", "external_id": str(i), "title": "alpha" if i % 3 else "beta"} for i in range(20)]
    ids = insert_records(db, rows)
    expected = [record_id for record_id, row in zip(ids, rows, strict=True) if row["title"] == "alpha"]
    assert await walk(client, {"q": "alpha"}, page_size=3) == expected


async def test_switching_from_page_mode_to_cursor_continues_after_the_page(client, db):
    ids = seed(db, {"posts": 10})
    first = (await client.get("/data", params={"page": 2, "page_size": 3})).json()
    assert [item["id"] for item in first["items"]] == sorted(ids)[3:6]
    rest = (await client.get("/data", params={"page_size": 10, "cursor": first["next_cursor"], "page": 1})).json()
    assert rest["page"] is None
    assert [item["id"] for item in rest["items"]] == sorted(ids)[6:]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("mutate", ["flip_payload", "flip_mac", "garbage", "no_dot", "huge", "forged_id"])
async def test_tampered_cursor_is_400(client, db, mutate):
    seed(db, {"posts": 6})
    cursor = (await client.get("/data", params={"page_size": 2})).json()["next_cursor"]
    payload, mac = cursor.split(".")
    tampered = {
        "flip_payload": payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac,
        "flip_mac": payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),
        "garbage": "abc",
        "no_dot": payload,
        "huge": "x" * 400 + "." + "y" * 100,
        # A well-formed payload naming another position, with the old MAC.
        "forged_id": "eyJ2IjoxLCJhZnRlciI6MCwiZiI6IjAwMDAwMDAwMDAwMCJ9." + mac,
    }[mutate]
    error = assert_error(await client.get("/data", params={"cursor": tampered}), 400, "invalid_cursor")
    assert "cursor" in error["message"]


async def test_cursor_with_other_filters_is_400(client, db):
    seed(db, {"posts": 6})
    cursor = (await client.get("/data", params={"page_size": 2, "source": "posts"})).json()["next_cursor"]
    error = assert_error(await client.get("/data", params={"cursor": cursor, "source": "news"}), 400)
    assert "different filters" in error["message"]


async def test_too_long_cursor_is_422(client):
    assert_error(await client.get("/data", params={"cursor": "x" * 600}), 422)


async def test_full_text_web_search_syntax(client, db):
    rows = [
        {"source": "posts", "external_id": "1", "title": "apple banana"},
        {"source": "posts", "external_id": "2", "title": "apple cherry"},
        {"source": "posts", "external_id": "3", "title": "banana split", "content": "with cream"},
        {"source": "news", "external_id": "4", "title": "a quoted phrase appears here"},
        {"source": "news", "external_id": "5", "title": "phrase quoted backwards", "author": "cherry"},
    ]
    insert_records(db, rows)

    async def external_ids(q: str, **extra: object) -> list[str]:
        response = await client.get("/data", params={"q": q, **extra})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return [item["external_id"] for item in body["items"]]

    assert await external_ids("apple") == ["1", "2"]
    assert await external_ids("apple -banana") == ["2"]
    assert await external_ids("banana OR cherry") == ["1", "2", "3", "5"]
    assert await external_ids('"quoted phrase"') == ["4"]
    assert await external_ids("quoted phrase") == ["4", "5"]
    assert await external_ids("cream") == ["3"]
    assert await external_ids("cherry", source="news") == ["5"]
    assert await external_ids('"unbalanced quote') == []
    assert await external_ids("the") == []  # only a stop word: matches nothing, no error


async def test_since_until_filter_updated_at(client, db):
    stamps = [datetime(2026, month, 1, tzinfo=UTC) for month in (1, 2, 3)]
    rows = [{"source": "posts", "external_id": str(i), "updated_at": ts} for i, ts in enumerate(stamps)]
    insert_records(db, rows)

    async def ids(**params: str) -> list[str]:
        body = (await client.get("/data", params=params)).json()
        assert body["total"] == len(body["items"]) and body["total_is_estimate"] is False
        return [item["external_id"] for item in body["items"]]

    assert await ids(since="2026-02-01T00:00:00Z") == ["1", "2"]  # since is inclusive
    assert await ids(until="2026-02-01T00:00:00Z") == ["0"]  # until is exclusive
    assert await ids(since="2026-01-15T00:00:00Z", until="2026-02-15T00:00:00Z") == ["1"]
    assert await ids(since="2026-02-01T01:00:00+01:00") == ["1", "2"]  # offsets are honoured
    assert await ids(since="2026-02-01T00:00:00") == ["1", "2"]  # naive means UTC
    assert await ids(since="2026-04-01T00:00:00Z") == []


async def test_injection_looking_input_is_plain_text(client, db):
    seed(db, {"posts": 3})
    hostile = "'; DROP TABLE records; --"
    for params in ({"q": hostile}, {"source": hostile}, {"q": hostile, "source": [hostile, "posts"]}):
        response = await client.get("/data", params=params)
        assert response.status_code == 200, response.text
    assert (await client.get("/data", params={"source": hostile})).json()["total"] == 0
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 3
    assert (await client.get("/data")).json()["total"] == 3


async def test_nul_characters_are_422_not_500(client, db):
    for params in ({"q": "a\x00b"}, {"source": "a\x00b"}, {"since": "2026-01-01T00:00:00Z", "source": "\x00"}):
        assert_error(await client.get("/data", params=params), 422, "validation_error")
    assert_error(await client.get("/runs", params={"source": "\x00"}), 422)


async def test_total_without_text_filters_comes_from_maintained_counts(client, db):
    seed(db, {"posts": 2, "news": 1})
    # The maintained figure is what /data reports; it never recounts the table.
    db.execute("UPDATE source_stats SET records = 1000 WHERE source = 'posts'")
    assert (await client.get("/data")).json()["total"] == 1001
    assert (await client.get("/data", params={"source": "posts"})).json()["total"] == 1000
    assert (await client.get("/data", params={"source": ["news", "nope"]})).json()["total"] == 1


async def test_total_is_the_same_on_a_page_past_the_end(client, db):
    # The total normally comes with the page's rows; an empty page must still carry it.
    seed(db, {"posts": 3, "news": 2})
    for params in ({}, {"source": ["posts"]}, {"source": ["news", "nope"]}):
        full = (await client.get("/data", params=params)).json()
        past = (await client.get("/data", params={**params, "page": 99})).json()
        assert past["items"] == [] and past["total"] == full["total"] == db.execute(
            "SELECT count(*) FROM records WHERE source = ANY(%s)", [params.get("source", ["posts", "news"])]
        ).fetchone()[0]
        assert past["total_is_estimate"] is full["total_is_estimate"] is False


async def test_total_above_the_cap_is_a_flagged_estimate(client, db, monkeypatch):
    monkeypatch.setattr(data_module, "EXACT_TOTAL_CAP", 5)
    insert_records(db, [{"source": "posts", "external_id": str(i), "title": "many"} for i in range(12)])
    db.execute("ANALYZE records")
    body = (await client.get("/data", params={"q": "many", "page_size": 2})).json()
    assert body["total_is_estimate"] is True
    assert body["total"] > 5
    timed = (await client.get("/data", params={"since": "2000-01-01T00:00:00Z"})).json()
    assert timed["total_is_estimate"] is True and timed["total"] > 5
    monkeypatch.setattr(data_module, "EXACT_TOTAL_CAP", 100_000)
    exact = (await client.get("/data", params={"q": "many"})).json()
    assert exact["total"] == 12 and exact["total_is_estimate"] is False


async def test_get_one_record(client, db):
    [record_id] = insert_records(db, [{"source": "posts", "external_id": "x", "title": "one"}])
    response = await client.get(f"/data/{record_id}")
    assert response.status_code == 200
    assert set(response.json()) == RECORD_KEYS and response.json()["title"] == "one"
    error = assert_error(await client.get("/data/999999"), 404, "not_found")
    assert "999999" in error["message"]
    assert "path parameter 'id'" in assert_error(await client.get("/data/abc"), 422)["message"]
    assert_error(await client.get("/data/0"), 422)
    assert_error(await client.get(f"/data/{2**64}"), 422)


async def test_data_answers_503_envelope_when_database_is_down(make_client):
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    error = assert_error(await client.get("/data"), 503, "unavailable")
    assert "database" in error["message"]


async def test_filtered_total_is_the_same_on_every_page_of_a_walk_and_past_the_end(client, db):
    insert_records(db, [{"source": "posts", "external_id": f"m{i}", "title": "match"} for i in range(7)])
    insert_records(db, [{"source": "news", "external_id": f"n{i}", "title": "match"} for i in range(2)])
    insert_records(db, [{"source": "posts", "external_id": f"o{i}", "title": "other"} for i in range(3)])
    for params, expected in (({"q": "match"}, 9), ({"q": "match", "source": "posts"}, 7),
                             ({"since": "2000-01-01T00:00:00Z", "source": "news"}, 2)):  # fmt: skip
        body = (await client.get("/data", params={**params, "page_size": 3})).json()
        totals, seen = [body["total"]], len(body["items"])
        while body["next_cursor"] is not None:
            body = (await client.get("/data", params={**params, "page_size": 3, "cursor": body["next_cursor"]})).json()
            totals.append(body["total"])
            seen += len(body["items"])
            assert body["total_is_estimate"] is False
        assert seen == expected and set(totals) == {expected}, (params, totals)
        past = (await client.get("/data", params={**params, "page": 99})).json()
        assert past["items"] == [] and past["total"] == expected and past["total_is_estimate"] is False
