"""A paginated http_json fetch as a chain of segments (fetch/segment.py, sources/http_json.py).

In-process (no worker): fetch_run is called once per segment, as the continuation tasks
would be, against a real local HTTP upstream and the test database, so that a segment can
be cut after any page, crashed mid-way, or overtaken by a second task holding the lease.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.runs import create_run
from tests.support.http_server import LocalHTTPServer, Request, Response
from tests.support.pipeline import get_run, records, source
from workers.pipeline.fetch.segment import SegmentBudget
from workers.pipeline.fetch.stage import fetch_run
from workers.pipeline.normalize.stage import process_chunk
from workers.pipeline.raw import load_chunk

N, PAGE = 95, 10  # ten pages, the last one short
UPSTREAM = [{"id": n, "title": f"post {n}"} for n in range(1, N + 1)]
EVERY_PAGE = SegmentBudget(seconds=0, chunks=1)  # spent at once: each segment stops at its first Boundary


def by_page(request: Request) -> tuple[int, Response]:
    page = int(request.query["page"])
    return page, Response(200, json.dumps({"data": UPSTREAM[(page - 1) * PAGE : page * PAGE]}))


def by_offset(request: Request) -> tuple[int, Response]:
    offset = int(request.query["offset"])
    return offset // PAGE + 1, Response(200, json.dumps({"data": UPSTREAM[offset : offset + PAGE]}))


def by_cursor(request: Request) -> tuple[int, Response]:
    start = int(request.query.get("cursor", "at0")[2:])
    following = f"at{start + PAGE}" if start + PAGE < N else None
    body = {"data": UPSTREAM[start : start + PAGE], "meta": {"next": following}}
    return start // PAGE + 1, Response(200, json.dumps(body))


def by_link(request: Request) -> tuple[int, Response]:
    page = int(request.query.get("page", "1"))
    headers = {"Link": f'</api?page={page + 1}>; rel="next"'} if page * PAGE < N else {}
    return page, Response(200, json.dumps({"data": UPSTREAM[(page - 1) * PAGE : page * PAGE]}), headers=headers)


def whole(request: Request) -> tuple[int, Response]:
    return 1, Response(200, json.dumps({"data": UPSTREAM}))


STYLES: dict[str, tuple[Callable[[Request], tuple[int, Response]], dict[str, Any]]] = {
    "page": (by_page, {"pagination": "page", "page_size": PAGE}),
    "offset": (by_offset, {"pagination": "offset", "page_size": PAGE}),
    "cursor": (by_cursor, {"pagination": "cursor", "next_cursor_path": "meta.next"}),
    "link": (by_link, {"pagination": "link"}),
    "none": (whole, {"pagination": "none"}),
}


class Upstream:
    """Serves one style's pages and counts the requests for each page."""

    def __init__(self, server: LocalHTTPServer, style: str):
        self.handler, self.config = STYLES[style]
        self.requested: Counter[int] = Counter()
        self.url = server.url + "/api"
        server.route("/api", self)

    def __call__(self, request: Request) -> Response:
        page, response = self.handler(request)
        self.requested[page] += 1
        return response


class Crash(Exception):
    """The task died here (a SIGKILL, as far as the database can tell: nothing more is written)."""


def stored(conn: psycopg.Connection, run_id: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The run's raw chunk numbers, and (line, id) of every item they hold."""
    numbers = [row[0] for row in conn.execute(
        "SELECT chunk_no FROM raw_chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,))]
    items = []
    for chunk_no in numbers:
        chunk = load_chunk(conn, run_id=run_id, chunk_no=chunk_no)
        assert chunk is not None
        items += [(item.line, item.record["id"]) for item in chunk.items]  # type: ignore[index]
    conn.commit()
    return numbers, items


def segment(conn: psycopg.Connection, run_id: int, sent: list[int], continued: list[int], *,
            budget: SegmentBudget = EVERY_PAGE, timeout_s: float = 300,
            enqueue_chunk: Callable[[int, int], None] | None = None) -> None:
    """One fetch task: one segment of the run's fetch."""
    fetch_run(conn, run_id, enqueue_chunk=enqueue_chunk or (lambda _run, chunk_no: sent.append(chunk_no)),
              max_attempts=5, budget=budget, enqueue_continuation=continued.append, timeout_s=timeout_s)


def normalize_all(conn: psycopg.Connection, db: psycopg.Connection, run_id: int, name: str) -> dict[str, Any]:
    for chunk_no in range(get_run(db, run_id)["chunks_total"]):
        process_chunk(conn, run_id, chunk_no)
    run = get_run(db, run_id)
    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert run["fetched"] == run["inserted"] == N
    assert set(records(db, name)) == {str(n) for n in range(1, N + 1)}
    return run


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_fetch_cut_after_every_page_reads_each_page_and_record_once(
    db: psycopg.Connection, database: str, style: str
) -> None:
    with LocalHTTPServer() as server, psycopg.connect(database) as conn:
        upstream = Upstream(server, style)
        config = source("paged", "http_json", upstream.url, records_path="data", chunk_size=4, **upstream.config)
        run_id = int(create_run(conn, config, "api")["id"])
        sent: list[int] = []
        continued: list[int] = []
        segments = 0
        while get_run(db, run_id)["chunks_total"] is None:
            segment(conn, run_id, sent, continued)
            segments += 1
            assert segments <= 20, "the fetch does not end"
            run = get_run(db, run_id)
            numbers, items = stored(db, run_id)
            if run["chunks_total"] is None:  # the segment committed where the next one starts, with its last chunk
                position = run["fetch_position"]
                assert position["chunk_no"] == len(numbers)
                assert (position["source"]["pages"], position["source"]["items"]) == (segments, len(items))
                assert run["fetch_progress"]["pages"] == segments and run["fetch_lease"] is None

        pages = 1 if style == "none" else 10
        assert segments == pages and continued == [run_id] * (pages - 1)
        assert upstream.requested == Counter(range(1, pages + 1))  # each page once
        numbers, items = stored(db, run_id)
        run = get_run(db, run_id)
        assert numbers == list(range(run["chunks_total"])) == sent  # contiguous, each handed on once
        assert sorted(items) == [(n, n) for n in range(1, N + 1)]  # every record once, lines counted on
        assert (run["fetch_segments"], run["fetch_position"], run["fetch_progress"]["done"]) == (pages, None, True)
        normalize_all(conn, db, run_id, "paged")


@pytest.mark.parametrize("interruption", ["crash", "second lease"])
def test_an_interrupted_segment_re_reads_only_its_own_pages(
    db: psycopg.Connection, database: str, interruption: str
) -> None:
    # chunk_size 4, pages of 10, at least 3 chunks a segment: segment 1 reads pages 1-2
    # (chunks 0-4), segment 2 pages 3-4 (chunks 5-9), and is interrupted once chunk 7 is stored.
    budget = SegmentBudget(seconds=3600, chunks=3)
    with LocalHTTPServer() as server, psycopg.connect(database) as conn, psycopg.connect(database) as other:
        upstream = Upstream(server, "page")
        config = source("paged", "http_json", upstream.url, records_path="data", chunk_size=4, **upstream.config)
        run_id = int(create_run(conn, config, "api")["id"])
        sent: list[int] = []
        continued: list[int] = []
        interrupted: list[dict[str, Any]] = []

        def enqueue(_run: int, chunk_no: int) -> None:
            sent.append(chunk_no)
            if chunk_no != 7 or interrupted:
                return
            interrupted.append(get_run(db, run_id)["fetch_position"])
            if interruption == "crash":
                raise Crash
            # Another task takes the lease (this one looked silent too long) and reads the segment itself.
            segment(other, run_id, sent, continued, budget=budget, timeout_s=0)

        segment(conn, run_id, sent, continued, budget=budget, enqueue_chunk=enqueue)
        assert get_run(db, run_id)["fetch_position"]["chunk_no"] == 5
        try:
            segment(conn, run_id, sent, continued, budget=budget, enqueue_chunk=enqueue)
        except Crash:  # the task is gone; the lease it held is taken once it looks silent (timeout_s=0 here)
            segment(conn, run_id, sent, continued, budget=budget, timeout_s=0)
        while get_run(db, run_id)["chunks_total"] is None:
            segment(conn, run_id, sent, continued, budget=budget)

        assert interrupted == [{"chunk_no": 5, "source": {
            "request": {"url": upstream.url, "params": {"page": 3, "per_page": PAGE}},
            "pages": 2, "items": 20, "paginator": {}}}]
        assert upstream.requested == Counter({**dict.fromkeys(range(1, 11), 1), 3: 2, 4: 2})
        numbers, items = stored(db, run_id)
        run = get_run(db, run_id)
        assert numbers == list(range(run["chunks_total"])) and set(sent) == set(numbers)
        assert sorted(items) == [(n, n) for n in range(1, N + 1)]
        assert run["fetch_segments"] == 5  # pages 1-2, 3-4, 5-6, 7-8, 9-10: the interrupted one did not count
        normalize_all(conn, db, run_id, "paged")
