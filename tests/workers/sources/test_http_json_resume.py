"""http_json page walks stop at a Boundary between two pages and resume from its position.

Each walk here is cut at every Boundary: the position is taken (and passed through JSON,
as runs.fetch_position keeps it) and a fresh extract(..., resume=position) goes on, as the
next fetch segment would. The pieces must add up to the uncut walk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.http_server import LocalHTTPServer, Request, Response
from workers.sources import http_json
from workers.sources.base import Boundary, FetchState, PermanentError, RawItem
from workers.sources.pagination import REMEMBERED_POINTERS, Cursor, LinkHeader, RecentPointers

RECORDS = [{"id": n, "title": f"post {n}"} for n in range(1, 26)]  # pages of 10: 10, 10, 5


def by_page(request: Request) -> Response:
    page, size = int(request.query["page"]), int(request.query["per_page"])
    return Response(200, json.dumps({"results": RECORDS[(page - 1) * size : page * size]}))


def by_offset(request: Request) -> Response:
    offset, limit = int(request.query["offset"]), int(request.query["limit"])
    return Response(200, json.dumps({"results": RECORDS[offset : offset + limit]}))


def by_cursor(request: Request) -> Response:
    start = int(request.query.get("cursor", "c0")[1:])
    following = f"c{start + 10}" if start + 10 < len(RECORDS) else None
    return Response(200, json.dumps({"results": RECORDS[start : start + 10], "meta": {"next": following}}))


def by_link(request: Request) -> Response:
    page = int(request.query.get("page", "1"))
    headers = {"Link": f'</l?page={page + 1}>; rel="next"'} if page * 10 < len(RECORDS) else {}
    return Response(200, json.dumps({"results": RECORDS[(page - 1) * 10 : page * 10]}), headers=headers)


STYLES: dict[str, tuple[Callable[[Request], Response], dict[str, Any]]] = {
    "page": (by_page, {"pagination": "page", "page_size": 10}),
    "offset": (by_offset, {"pagination": "offset", "page_size": 10}),
    "cursor": (by_cursor, {"pagination": "cursor", "next_cursor_path": "meta.next"}),
    "link": (by_link, {"pagination": "link"}),
}


def walk_in_segments(source, fetcher_for, state: FetchState | None = None):  # type: ignore[no-untyped-def]
    """Read the source one page per extract(), resuming at each Boundary; (items, segments' new_state)."""
    items: list[RawItem] = []
    states: list[dict[str, Any]] = []
    resume: dict[str, Any] | None = None
    while True:
        extraction = http_json.extract(source, state or FetchState(), fetcher_for(source), resume)
        resume = None
        for item in extraction.items:
            if isinstance(item, Boundary):
                resume = json.loads(json.dumps(item.position()))  # as runs.fetch_position stores it
                extraction.items.close()  # type: ignore[attr-defined]  # the segment ends here
                break
            items.append(item)
        states.append(extraction.new_state)
        if resume is None:
            return items, states


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_walk_cut_at_every_page_reads_each_page_once_and_every_record_once(
    server: LocalHTTPServer, make_source, fetcher_for, style: str
) -> None:
    handler, config = STYLES[style]
    server.route("/l", handler)
    source = make_source(url=server.url + "/l", records_path="results", **config)

    items, states = walk_in_segments(source, fetcher_for, FetchState(etag='"v1"'))

    assert [item.record["id"] for item in items] == list(range(1, 26))  # type: ignore[index]
    assert [item.line for item in items] == list(range(1, 26))  # positions go on counting across segments
    assert len(server.requests) == 3 == len(states)  # one request per page, one segment per page
    assert len({json.dumps(r.query, sort_keys=True) for r in server.requests}) == 3
    # Only the first request of the run is conditional; a resumed segment learns no validators.
    assert [r.headers.get("if-none-match") for r in server.requests] == ['"v1"', None, None]
    assert states[1:] == [{}, {}]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_boundaries_come_between_pages_with_the_progress_so_far(
    server: LocalHTTPServer, make_source, fetcher_for, style: str
) -> None:
    handler, config = STYLES[style]
    server.route("/l", handler)
    source = make_source(url=server.url + "/l", records_path="results", **config)

    stream = list(http_json.extract(source, FetchState(), fetcher_for(source)).items)

    boundaries = [(at, item.progress) for at, item in enumerate(stream) if isinstance(item, Boundary)]
    assert boundaries == [(10, {"pages": 1, "items": 10}), (21, {"pages": 2, "items": 20})]  # none after the last


def test_since_param_goes_on_in_resumed_segments(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    server.route("/l", by_cursor)
    source = make_source(url=server.url + "/l", records_path="results", pagination="cursor",
                         next_cursor_path="meta.next", since_param="since", incremental_field="id")

    walk_in_segments(source, fetcher_for, FetchState(checkpoint=3))

    assert [r.query.get("since") for r in server.requests] == ["3", "3", "3"]


def test_max_pages_holds_across_segments(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    server.route("/forever", lambda request: Response(200, json.dumps(RECORDS[:10])))
    source = make_source(url=server.url + "/forever", pagination="page", page_size=10, max_pages=3)

    with pytest.raises(PermanentError, match="max_pages=3"):
        walk_in_segments(source, fetcher_for)
    assert len(server.requests) == 3


def test_a_cursor_loop_is_caught_across_segments(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    def looping(request: Request) -> Response:
        following = {"": "a", "a": "b", "b": "a"}[request.query.get("cursor", "")]
        return Response(200, json.dumps({"items": [{"id": request.query.get("cursor", "0")}],
                                         "meta": {"next": following}}))

    server.route("/loop", looping)
    source = make_source(url=server.url + "/loop", records_path="items", pagination="cursor")

    with pytest.raises(PermanentError, match="pagination loop"):
        walk_in_segments(source, fetcher_for)
    assert [r.query.get("cursor") for r in server.requests] == [None, "a", "b"]


def test_a_link_loop_is_caught_across_segments(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    def linked(request: Request) -> Response:
        target = "/l?page=2" if request.query.get("page") != "2" else "/l"
        return Response(200, json.dumps([{"id": 1}]), headers={"Link": f'<{target}>; rel="next"'})

    server.route("/l", linked)
    source = make_source(url=server.url + "/l", pagination="link")

    with pytest.raises(PermanentError, match="pagination loop"):
        walk_in_segments(source, fetcher_for)
    assert len(server.requests) == 2


def test_a_304_to_a_resumed_page_is_a_broken_server(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    server.route("/p", lambda request: by_page(request) if request.query["page"] == "1" else Response(304))
    source = make_source(url=server.url + "/p", records_path="results", pagination="page", page_size=10)

    with pytest.raises(PermanentError, match="unexpected 304"):
        walk_in_segments(source, fetcher_for)


def test_an_unreadable_position_fails_clearly(server: LocalHTTPServer, make_source, fetcher_for) -> None:
    server.route("/p", by_page)
    source = make_source(url=server.url + "/p", records_path="results", pagination="cursor")

    with pytest.raises(PermanentError, match="cannot resume"):
        http_json.extract(source, FetchState(), fetcher_for(source), {"chunk": 3})
    assert server.requests == []


def test_one_document_is_one_segment(server: LocalHTTPServer, make_source, fetcher_for, tmp_path) -> None:
    server.route("/all", Response(200, json.dumps(RECORDS)))
    remote = make_source(url=server.url + "/all")
    path = tmp_path / "all.json"
    path.write_text(json.dumps(RECORDS))
    local = make_source(url=str(path))

    for source in (remote, local):
        stream = list(http_json.extract(source, FetchState(), fetcher_for(source)).items)
        assert all(isinstance(item, RawItem) for item in stream) and len(stream) == 25
    with pytest.raises(PermanentError, match="one segment"):
        http_json.extract(local, FetchState(), None, {"request": {}})


def test_pointer_memory_is_bounded_to_the_most_recent() -> None:
    memory = RecentPointers(str(n) for n in range(REMEMBERED_POINTERS + 5))
    assert len(memory) == REMEMBERED_POINTERS
    assert "4" not in memory and "5" in memory and str(REMEMBERED_POINTERS + 4) in memory
    memory.add("5")  # followed again: now the most recent, so kept longest
    memory.add("new")
    assert "5" in memory and "6" not in memory
    assert RecentPointers(memory.as_list()).as_list() == memory.as_list()


@pytest.mark.parametrize("style", [Cursor, LinkHeader])
def test_pointer_styles_resume_their_memory_and_base_parameters(style: type) -> None:
    walking = style("cursor", "meta.next") if style is Cursor else style()
    walking.first("http://upstream/x", {"since": "3"})
    walking._seen.add("c10")
    resumed = style("cursor", "meta.next") if style is Cursor else style()
    resumed.resume(json.loads(json.dumps(walking.position())))
    assert resumed.position() == walking.position() == {"base": {"since": "3"}, "seen": ["c10"]}
