"""GET /data renders its records in PostgreSQL (row_to_json, app/api/routes/data.py): the page
must read exactly as when the API rendered the rows itself with orjson: the same keys in
the same order, the same strings, timestamps in UTC as `+00:00`, and the same `data`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import psycopg
from psycopg import sql

from tests.api.conftest import insert_records

COLUMNS = [
    "id", "source", "external_id", "title", "content", "author", "url", "published_at", "data", "content_hash",
    "first_seen_at", "updated_at",
]  # fmt: skip

TRICKY = [
    {
        "source": "posts",
        "external_id": "quotes",
        "title": 'say "hi" \\ back\\slash\nnew line\ttab \x01\x1f control \x7f',
        "content": "unicode é ✓ 😀 \u2028 \u2029 </script>",
        "author": "",
        "url": "https://example.com/a?b=c&d=<e>",
        "published_at": datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        "data": {
            "z": 1, "a": [1, 2.5, -0.1, 1e-7, 123456789.125, 2**53 + 1, True, False, None], "": {}, "é": "ü",
            "nested": {"list": [], "obj": {"x": "y\"z"}}, "big": 2**64 - 1, "neg": -(2**63),
        },  # fmt: skip
        "updated_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
    },
    {
        "source": "posts",
        "external_id": "nulls",
        "published_at": datetime(1900, 1, 1, 0, 0, 0, 10, tzinfo=UTC),
        "data": {"only": None},
        "updated_at": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    },
    {
        "source": "news",
        "external_id": "ancient",
        "published_at": datetime(1, 1, 1, tzinfo=UTC),
        "data": [],
        "updated_at": datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),  # trailing zeros are kept
    },
]


def rendered_by_python(db: psycopg.Connection) -> list[bytes]:
    """Each record as the API rendered it before PostgreSQL did: orjson over the row."""
    rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY id").fetchall()
    return [orjson.dumps({**dict(zip(COLUMNS, row, strict=True)), "content_hash": row[9].hex()}) for row in rows]


def timestamps(item: dict) -> list[str | None]:
    return [item["published_at"], item["first_seen_at"], item["updated_at"]]


async def test_records_read_as_the_api_rendered_them_itself(client, db):
    insert_records(db, TRICKY)
    expected = [orjson.loads(item) for item in rendered_by_python(db)]
    response = await client.get("/data")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    items = response.json()["items"]
    assert items == expected
    assert [list(item) for item in items] == [COLUMNS] * len(TRICKY)  # key order too
    assert [timestamps(item) for item in items] == [timestamps(item) for item in expected]  # same strings
    assert items[0]["published_at"] == "2026-03-01T06:30:00+00:00"
    assert items[0]["updated_at"] == "2026-01-02T03:04:05+00:00"
    assert items[1]["updated_at"] == "2026-01-02T03:04:05.123456+00:00"
    assert items[1]["published_at"] == "1900-01-01T00:00:00.000010+00:00"
    assert items[2]["published_at"] == "0001-01-01T00:00:00+00:00"
    assert items[2]["updated_at"] == "2026-01-02T03:04:05.120000+00:00"
    by_id = [(await client.get("/data", params={"page_size": 1, "page": n})).json()["items"] for n in (1, 2, 3)]
    assert [page[0] for page in by_id] == expected


async def test_timestamps_are_utc_whatever_the_server_time_zone(make_client, db):
    insert_records(db, TRICKY[:1])
    database = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'Asia/Kolkata'").format(sql.Identifier(database)))
    try:
        client = await make_client()  # new connections start in the database's default time zone
        item = (await client.get("/data")).json()["items"][0]
    finally:
        db.execute(sql.SQL("ALTER DATABASE {} RESET timezone").format(sql.Identifier(database)))
    assert item["published_at"] == "2026-03-01T06:30:00+00:00"
    assert item["updated_at"] == "2026-01-02T03:04:05+00:00"


async def test_page_size_and_next_cursor_around_the_page_end(client, db):
    ids = insert_records(db, [{"source": "posts", "external_id": str(n)} for n in range(5)])
    full = (await client.get("/data", params={"page_size": 5})).json()
    assert [item["id"] for item in full["items"]] == ids and full["next_cursor"] is None and full["total"] == 5
    first = (await client.get("/data", params={"page_size": 4})).json()
    assert [item["id"] for item in first["items"]] == ids[:4] and first["next_cursor"] is not None
    rest = (await client.get("/data", params={"cursor": first["next_cursor"], "page_size": 4})).json()
    assert [item["id"] for item in rest["items"]] == ids[4:] and rest["next_cursor"] is None
    past = (await client.get("/data", params={"page": 9})).json()
    assert past["items"] == [] and past["total"] == 5 and past["next_cursor"] is None


async def test_timestamps_read_as_python_isoformat_for_any_microseconds(client, db):
    micros = [0, 1, 10, 500, 100000, 120000, 123450, 999999]
    stamps = [datetime(2026, 7, 8, 9, 10, 11, micro, tzinfo=UTC) for micro in micros]
    insert_records(db, [{"source": "posts", "external_id": str(n), "updated_at": ts} for n, ts in enumerate(stamps)])
    items = (await client.get("/data")).json()["items"]
    assert [item["updated_at"] for item in items] == [ts.isoformat() for ts in stamps]
    assert [item["published_at"] for item in items] == [None] * len(stamps)
