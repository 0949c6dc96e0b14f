"""Schema-based fuzzing of the whole OpenAPI document (schemathesis, inside the normal suite).

Every documented operation gets generated requests, valid and invalid (schemathesis'
examples, coverage and fuzzing phases), against the real app, the PostgreSQL test
database and the Redis test database, seeded first so the GET endpoints return real
bodies. Every response must be:

- no server error (with PostgreSQL and Redis up there is no reason for any 5xx);
- a documented status code, with a documented content type;
- a body that matches the documented schema;
- for every 4xx and 5xx, exactly the error envelope, its request_id equal to `X-Request-ID`.

Write endpoints get a valid API key, so POST /runs really creates runs and sends fetch
messages to the test Redis (nothing consumes them). POST /webhooks/{source}: a test-only
ASGI wrapper signs part of the deliveries to the `orders` source with its real secret,
so the accepting path (202, duplicate ids, bodies the signature covers) is fuzzed too;
the rest keep their generated source and headers and mostly get 404/401/422.

Bounded and deterministic: 50 fuzzed examples per operation, derandomized, no example
database; about 10 s on a 2-core machine.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.webhooks.signature import sign
from app.core.run_status import RunStatus
from app.main import create_app
from app.settings import Settings
from tests.api.conftest import AUTH, PLAIN_KEY, insert_records, insert_run

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fuzz-orders-signing-key").decode()
WEBHOOK_SOURCE = "orders"  # the webhook source of tests/cases/sources.test.toml
SIGN_MARKER = "x-fuzz-sign"  # test-only header: the wrapper below replaces it by a valid signature


class SignWebhooks:
    """Test-only ASGI wrapper: a request carrying SIGN_MARKER gets real Standard Webhooks
    headers computed over the exact body bytes the app will read."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        if scope["type"] != "http" or not any(name == SIGN_MARKER.encode() for name, _ in headers):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # The id follows the body: a repeated body is a repeated delivery (the duplicate path).
        webhook_id = "msg_" + hashlib.sha256(body).hexdigest()[:32]
        timestamp = int(time.time())
        signed = [
            (name, value)
            for name, value in headers
            if name != SIGN_MARKER.encode() and not name.startswith(b"webhook-")
        ]
        signed += [
            (b"webhook-id", webhook_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(WEBHOOK_SECRET, webhook_id, timestamp, body).encode()),
        ]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": signed}, replay, send)


# Built at import (schemathesis parametrizes at collection) but cheap: no connection is
# opened until the first request starts the lifespan on schemathesis' event-loop thread.
APP = create_app(Settings(rate_limit="1000000/minute", api_keys=PLAIN_KEY))
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = SignWebhooks(APP)


def error_code(response: Any) -> str | None:
    """The envelope's `error.code`, if the response is an error envelope."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every response has X-Request-ID; every 4xx/5xx is exactly the error envelope."""
    request_id = response.headers.get("x-request-id")
    if not request_id:
        raise Failure(operation=case.operation.label, title="No X-Request-ID", message="header missing")
    if response.status_code < 400:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    if (
        not isinstance(error, dict)
        or set(error) != {"code", "message", "request_id"}
        or not all(isinstance(value, str) for value in error.values())
    ):
        raise Failure(operation=case.operation.label, title="Not the error envelope", message=response.text[:500])
    if error["request_id"] != request_id[0]:
        raise Failure(
            operation=case.operation.label,
            title="Envelope request_id differs from X-Request-ID",
            message=f"{error['request_id']!r} != {request_id[0]!r}",
        )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    positive_data_acceptance,
    error_envelope,
]

# Rejections of schema-valid requests that are correct, documented behaviour the schema
# cannot express; only positive_data_acceptance is skipped for them, every other check runs.
EXPECTED_REJECTIONS = {
    # GET /data: a generated `cursor` is never one the API issued (MAC, filter fingerprint).
    "invalid_cursor",
    # POST /runs: examples share an Idempotency-Key across different bodies; reuse is refused.
    "idempotency_key_reused",
    # POST /runs: a configured name of a webhook source; which names are pulled is config.
    "not_runnable",
}


@pytest.fixture(scope="module", autouse=True)
def _lifespan_closed() -> Iterator[None]:
    yield
    # schemathesis started the app's lifespan on first use; close its pool and Redis
    # client before the session drops the test database.
    asgi.shutdown_lifespans()


def seed(db: psycopg.Connection) -> None:
    """A little of everything the read endpoints show, nulls and odd values included."""
    now = datetime.now(UTC)
    insert_records(
        db,
        [
            {
                "source": "posts",
                "external_id": "1",
                "title": "Hello world",
                "content": "first post",
                "author": "1",
                "data": {"id": 1, "title": "Hello world", "nested": {"list": [1, 2.5, None, "x"]}},
            },
            {
                "source": "posts",
                "external_id": "2",
                "title": "Ünïcödé ✓",
                "url": "https://example.com/2",
                "published_at": now - timedelta(days=3),
                "updated_at": now - timedelta(days=1),
            },
            {"source": "passengers", "external_id": "7", "data": {"PassengerId": 7, "Age": 38.0, "Survived": True}},
            {
                "source": "news",
                "external_id": "urn:x",
                "title": None,
                "content": None,
                "published_at": datetime(1999, 12, 31, 23, 59, tzinfo=UTC),
            },
            {"source": "retired", "external_id": "old-1", "title": "from a source no longer configured"},
        ],
    )
    counts = {"fetched": 10, "inserted": 6, "updated": 1, "unchanged": 1, "rejected": 2}
    insert_run(db, "posts", RunStatus.SUCCEEDED, trigger="api", started_at=now, fetched=2, inserted=2)
    failed = insert_run(db, "posts", RunStatus.FAILED, error="HTTP 503 from upstream")
    partial = insert_run(db, "passengers", RunStatus.PARTIAL, started_at=now, **counts)
    insert_run(db, "passengers", RunStatus.RUNNING, started_at=now, heartbeat_at=now)  # POST /runs {} -> 409
    insert_run(db, "orders", RunStatus.SUCCEEDED, trigger="webhook", chunks_total=1, fetched=1, inserted=1)
    db.execute("UPDATE source_stats SET rejected = 2 WHERE source = 'passengers'")
    db.execute(
        """INSERT INTO rejected_records (run_id, source, chunk_no, line_no, external_id, reason, field, message, raw)
           VALUES (%(partial)s, 'passengers', 0, 3, '3', 'coercion_failed', 'Age', 'not a float: abc',
                   '{"PassengerId": "3", "Age": "abc"}'),
                  (%(partial)s, 'passengers', 1, NULL, NULL, 'parse_error', NULL, 'row is not valid CSV', '"a,\\"b"'),
                  (%(failed)s, 'posts', 0, NULL, NULL, 'missing_id', 'id', 'no id field', NULL)""",
        {RunStatus.PARTIAL: partial, RunStatus.FAILED: failed},
    )
    db.execute(
        """INSERT INTO drift_events (source, run_id, kind, field, old_type, new_type)
           VALUES ('passengers', %(partial)s, 'type_changed', 'Age', 'float', 'str'),
                  ('posts', NULL, 'added', 'tags', NULL, 'list'),
                  ('posts', %(failed)s, 'removed', 'userId', 'int', NULL)""",
        {RunStatus.PARTIAL: partial, RunStatus.FAILED: failed},
    )
    db.execute("""INSERT INTO checkpoints (source, value, etag) VALUES ('posts', '{"max_id": 2}', 'W/"abc"'),
                                                                  ('passengers', '"2026-01-01"', NULL)""")
    db.execute("""INSERT INTO sources (name, kind, schedule, config, paused_reason)
                  VALUES ('news', 'rss', 'every 1h', '{}', 'schema drift: field ''guid'' removed')""")


@pytest.fixture
def seeded(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh, seeded database (and empty Redis db) for each operation's examples."""
    monkeypatch.setenv("ORDERS_WEBHOOK_SECRET", WEBHOOK_SECRET)
    seed(db)


def route_webhook(case: schemathesis.Case) -> None:
    """Send part of the webhook examples to the real webhook source, signed or not.

    Decided by the generated case itself (so a replayed example is the same request):
    with a generated `webhook-signature` the example is left alone (random source,
    mostly 404); with only some other webhook header it goes unsigned to `orders` (401);
    without any, it goes to `orders` and is signed (202, or 4xx for invalid bodies).
    """
    headers = {name.lower() for name in (case.headers or {})}
    if "webhook-signature" in headers:
        return
    case.path_parameters = {**(case.path_parameters or {}), "source": WEBHOOK_SOURCE}
    if not headers & {"webhook-id", "webhook-timestamp"}:
        case.headers = {**(case.headers or {}), SIGN_MARKER: "1"}


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@pytest.mark.usefixtures("seeded")
def test_openapi_fuzz(case: schemathesis.Case) -> None:
    if case.operation.path == "/webhooks/{source}":
        route_webhook(case)
    response = case.call(headers=AUTH)
    excluded = [positive_data_acceptance] if error_code(response) in EXPECTED_REJECTIONS else []
    case.validate_response(response, checks=CHECKS, excluded_checks=excluded, headers=AUTH)


# --- What the fuzzing found, pinned as plain tests -------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"since": "0001-01-01T00:00:00+01:00"}, 2),  # year 0 in UTC: before every record
        ({"until": "0001-01-01T00:00:00+00:01"}, 0),
        ({"until": "9999-12-31T23:59:59-01:00"}, 2),  # year 10000 in UTC: after every record
        ({"since": "9999-12-31T23:59:59-01:00"}, 0),
    ],
)
async def test_timestamps_beyond_the_utc_range_filter_as_they_say(
    client: Any, db: psycopg.Connection, params: dict[str, str], expected: int
) -> None:
    """Schema-valid date-times whose UTC instant no datetime can hold were a 422 from the driver."""
    insert_records(db, [{"source": "posts", "external_id": str(i)} for i in (1, 2)])
    first = await client.get("/data", params={**params, "page_size": 1})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["total"] == expected and len(body["items"]) == min(expected, 1)
    if expected > 1:  # the cursor carries the clamped filters: the walk goes on
        rest = await client.get("/data", params={**params, "page_size": 1, "cursor": body["next_cursor"]})
        assert rest.status_code == 200, rest.text
        assert [item["external_id"] for item in rest.json()["items"]] == ["2"]


async def test_webhook_empty_array_is_rejected_and_documented_so(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`[]` is refused (422); the documented request body used to allow it."""
    body_schema = APP.openapi()["paths"]["/webhooks/{source}"]["post"]["requestBody"]["content"]["application/json"]
    array_schema = next(option for option in body_schema["schema"]["oneOf"] if option["type"] == "array")
    assert array_schema["minItems"] == 1
    monkeypatch.setenv("ORDERS_WEBHOOK_SECRET", WEBHOOK_SECRET)
    timestamp = int(time.time())
    response = await client.post(
        "/webhooks/orders",
        content=b"[]",
        headers={
            "content-type": "application/json",
            "webhook-id": "msg_empty",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(WEBHOOK_SECRET, "msg_empty", timestamp, b"[]"),
        },
    )
    assert response.status_code == 422, response.text
