"""http_json connector: records, every pagination style, conditional GET, since, files."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.support.http_server import Request, Response
from workers.sources import http_json
from workers.sources.base import Boundary, FetchState, PermanentError, RawItem, TransientError

RECORDS = [{"id": n, "title": f"post {n}"} for n in range(1, 26)]  # 25: two full pages of 10 and a short one


def ids(items: list[RawItem]) -> list[Any]:
    return [item.record["id"] for item in items if item.record is not None]


def run(source, fetcher=None, state: FetchState | None = None):  # type: ignore[no-untyped-def]
    """The extraction and its items, without the Boundary markers between pages."""
    extraction = http_json.extract(source, state or FetchState(), fetcher)
    return extraction, [item for item in extraction.items if isinstance(item, RawItem)]


# -- records_path ----------------------------------------------------------------------


def test_body_is_the_list(server, make_source, fetcher_for) -> None:
    server.route("/posts", Response(200, json.dumps(RECORDS[:3])))
    source = make_source(url=server.url + "/posts")
    extraction, items = run(source, fetcher_for(source))
    assert [(item.record, item.line) for item in items] == [(RECORDS[n], n + 1) for n in range(3)]
    assert not extraction.not_modified


def test_dotted_records_path(server, make_source, fetcher_for, cases) -> None:
    server.route("/wrapped", Response(200, (cases / "posts_wrapped.json").read_bytes()))
    source = make_source(url=server.url + "/wrapped", records_path="data.items")
    _, items = run(source, fetcher_for(source))
    assert ids(items) == [1, 2, 3]


def test_single_object_is_one_record(server, make_source, fetcher_for) -> None:
    server.route("/one", Response(200, '{"data": {"id": 7, "name": "seven"}}'))
    source = make_source(url=server.url + "/one", records_path="data")
    _, items = run(source, fetcher_for(source))
    assert [item.record for item in items] == [{"id": 7, "name": "seven"}]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [('{"data": "oops"}', "data", "holds a str"), ('{"other": []}', "data", "not found"), ("42", "", "holds a int")],
)
def test_records_path_not_a_list_is_permanent(server, make_source, fetcher_for, body, path, message) -> None:
    server.route("/x", Response(200, body))
    source = make_source(url=server.url + "/x", records_path=path)
    with pytest.raises(PermanentError, match=message):
        run(source, fetcher_for(source))


def test_non_object_elements_are_rejections_with_their_json(server, make_source, fetcher_for, cases) -> None:
    server.route("/mixed", Response(200, (cases / "mixed_elements.json").read_bytes()))
    source = make_source(url=server.url + "/mixed")
    _, items = run(source, fetcher_for(source))
    assert [(i.line, i.record, i.error, i.raw_text) for i in items] == [
        (1, {"id": 1}, None, None),
        (2, None, "not an object", '"just a string"'),
        (3, None, "not an object", "42"),
        (4, None, "not an object", "null"),
        (5, None, "not an object", "[1, 2]"),
        (6, {"id": 2}, None, None),
    ]


def test_malformed_json_is_permanent(server, make_source, fetcher_for, cases) -> None:
    server.route("/bad", Response(200, (cases / "malformed.json").read_bytes()))
    source = make_source(url=server.url + "/bad")
    with pytest.raises(PermanentError, match="malformed JSON"):
        run(source, fetcher_for(source))
    assert len(server.requests) == 1  # not retried


def test_oversized_page_is_permanent(server, make_source, fetcher_for) -> None:
    server.route("/big", Response(200, json.dumps([{"id": n, "pad": "x" * 100} for n in range(100)])))
    source = make_source(url=server.url + "/big", max_response_bytes=2048)
    with pytest.raises(PermanentError, match="larger than 2048 bytes"):
        run(source, fetcher_for(source))


# -- pagination ------------------------------------------------------------------------


def paged(request: Request) -> Response:
    page, size = int(request.query["page"]), int(request.query["per_page"])
    return Response(200, json.dumps({"results": RECORDS[(page - 1) * size : page * size]}))


def test_page_pagination_walks_every_page(server, make_source, fetcher_for) -> None:
    server.route("/p", paged)
    source = make_source(url=server.url + "/p", records_path="results", pagination="page", page_size=10)
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [item.line for item in items] == list(range(1, 26))
    assert [r.query for r in server.requests] == [{"page": str(p), "per_page": "10"} for p in (1, 2, 3)]


def test_page_pagination_stops_at_an_empty_page(server, make_source, fetcher_for) -> None:
    server.route("/p", paged)
    source = make_source(
        url=server.url + "/p",
        records_path="results",
        pagination="page",
        page_size=5,
        start_page=1,
        page_param="page",
        size_param="per_page",
    )
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [r.query["page"] for r in server.requests] == ["1", "2", "3", "4", "5", "6"]  # 6 is empty


def test_page_pagination_custom_params_and_start_page(server, make_source, fetcher_for) -> None:
    def zero_based(request: Request) -> Response:
        page, size = int(request.query["p"]), int(request.query["n"])
        return Response(200, json.dumps(RECORDS[page * size : (page + 1) * size]))

    server.route("/z", zero_based)
    source = make_source(
        url=server.url + "/z", pagination="page", page_param="p", size_param="n", page_size=10, start_page=0
    )
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))


def test_offset_pagination_walks_every_page(server, make_source, fetcher_for) -> None:
    def handler(request: Request) -> Response:
        offset, limit = int(request.query["skip"]), int(request.query["take"])
        return Response(200, json.dumps(RECORDS[offset : offset + limit]))

    server.route("/o", handler)
    source = make_source(
        url=server.url + "/o", pagination="offset", offset_param="skip", limit_param="take", page_size=10
    )
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [r.query["skip"] for r in server.requests] == ["0", "10", "20"]


def cursor_pages(request: Request) -> Response:
    pages = {"": (RECORDS[:10], "c2"), "c2": (RECORDS[10:20], "c3"), "c3": (RECORDS[20:], None)}
    records, following = pages[request.query.get("after", "")]
    return Response(200, json.dumps({"items": records, "meta": {"next": following}}))


def test_cursor_pagination_walks_every_page(server, make_source, fetcher_for) -> None:
    server.route("/c", cursor_pages)
    source = make_source(url=server.url + "/c", records_path="items", pagination="cursor", cursor_param="after")
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [r.query.get("after") for r in server.requests] == [None, "c2", "c3"]


def test_cursor_empty_string_ends_the_walk(server, make_source, fetcher_for) -> None:
    server.route("/c", Response(200, json.dumps({"items": RECORDS[:2], "next": ""})))
    source = make_source(url=server.url + "/c", records_path="items", pagination="cursor", next_cursor_path="next")
    _, items = run(source, fetcher_for(source))
    assert ids(items) == [1, 2] and len(server.requests) == 1


def test_repeated_cursor_is_a_pagination_loop(server, make_source, fetcher_for) -> None:
    def looping(request: Request) -> Response:
        following = {"": "a", "a": "b", "b": "a"}[request.query.get("cursor", "")]
        return Response(
            200, json.dumps({"items": [{"id": request.query.get("cursor", "0")}], "meta": {"next": following}})
        )

    server.route("/loop", looping)
    source = make_source(url=server.url + "/loop", records_path="items", pagination="cursor")
    extraction = http_json.extract(source, FetchState(), fetcher_for(source))
    seen = []
    with pytest.raises(PermanentError, match="pagination loop"):
        for item in extraction.items:
            if isinstance(item, RawItem):
                seen.append(item.record["id"])
    assert seen == ["0", "a", "b"]  # every distinct page was delivered before the loop was detected
    assert len(server.requests) == 3


def test_link_header_pagination_walks_every_page(server, make_source, fetcher_for) -> None:
    def linked(request: Request) -> Response:
        page = int(request.query.get("page", "1"))
        headers = {}
        if page == 1:
            headers["Link"] = f'<{server.url}/l?page=2>; rel="next", <{server.url}/l?page=3>; rel="last"'
        elif page == 2:
            headers["Link"] = '</l?page=3>; rel="next"'  # relative target, resolved against the page url
        return Response(200, json.dumps(RECORDS[(page - 1) * 10 : page * 10]), headers=headers)

    server.route("/l", linked)
    source = make_source(url=server.url + "/l", pagination="link")
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [r.query.get("page") for r in server.requests] == [None, "2", "3"]


def test_link_back_to_a_visited_page_is_a_loop(server, make_source, fetcher_for) -> None:
    def linked(request: Request) -> Response:
        target = "/l?page=2" if request.query.get("page") != "2" else "/l"
        return Response(200, "[]", headers={"Link": f'<{target}>; rel="next"'})

    server.route("/l", linked)
    source = make_source(url=server.url + "/l", pagination="link")
    with pytest.raises(PermanentError, match="pagination loop"):
        run(source, fetcher_for(source))
    assert len(server.requests) == 2


def test_max_pages_bounds_a_never_ending_walk(server, make_source, fetcher_for) -> None:
    server.route("/forever", lambda r: Response(200, json.dumps(RECORDS[:10])))
    source = make_source(url=server.url + "/forever", pagination="page", page_size=10, max_pages=3)
    extraction = http_json.extract(source, FetchState(), fetcher_for(source))
    with pytest.raises(PermanentError, match="max_pages=3"):
        list(extraction.items)
    assert len(server.requests) == 3


def test_pages_are_fetched_lazily(server, make_source, fetcher_for) -> None:
    server.route("/p", paged)
    source = make_source(url=server.url + "/p", records_path="results", pagination="page", page_size=10)
    extraction = http_json.extract(source, FetchState(), fetcher_for(source))
    assert len(server.requests) == 1  # the first page decides not_modified; the rest wait
    first_ten = [next(extraction.items) for _ in range(10)]
    assert ids(first_ten) == list(range(1, 11)) and len(server.requests) == 1
    # Between two pages, a Boundary: a fetch segment that stops there has not asked for the next page.
    assert isinstance(next(extraction.items), Boundary) and len(server.requests) == 1
    next(extraction.items)
    assert len(server.requests) == 2


def test_transient_failure_on_a_later_page_is_retried(server, make_source, fetcher_for) -> None:
    failures = {"left": 1}

    def flaky(request: Request) -> Response:
        if request.query["page"] == "2" and failures["left"]:
            failures["left"] -= 1
            return Response(503, b"")
        return paged(request)

    server.route("/p", flaky)
    source = make_source(url=server.url + "/p", records_path="results", pagination="page", page_size=10)
    _, items = run(source, fetcher_for(source))
    assert ids(items) == list(range(1, 26))
    assert [r.query["page"] for r in server.requests] == ["1", "2", "2", "3"]


def test_persistent_failure_surfaces_as_transient(server, make_source, fetcher_for) -> None:
    server.route("/down", Response(500, b"boom"))
    source = make_source(url=server.url + "/down")
    with pytest.raises(TransientError):
        run(source, fetcher_for(source))


# -- conditional GET, since, headers ---------------------------------------------------


def conditional(request: Request) -> Response:
    if request.headers.get("if-none-match") == '"v2"':
        return Response(304)
    return Response(
        200, json.dumps(RECORDS[:2]), headers={"ETag": '"v2"', "Last-Modified": "Wed, 25 Nov 2026 10:00:00 GMT"}
    )


def test_validators_of_the_first_response_are_the_new_state(server, make_source, fetcher_for) -> None:
    server.route("/c", conditional)
    source = make_source(url=server.url + "/c")
    extraction, items = run(source, fetcher_for(source))
    assert ids(items) == [1, 2]
    assert extraction.new_state == {"etag": '"v2"', "last_modified": "Wed, 25 Nov 2026 10:00:00 GMT"}


def test_304_means_not_modified_and_no_items(server, make_source, fetcher_for) -> None:
    server.route("/c", conditional)
    source = make_source(url=server.url + "/c")
    state = FetchState(etag='"v2"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
    extraction, items = run(source, fetcher_for(source), state)
    assert extraction.not_modified and items == [] and extraction.new_state == {}
    assert server.requests[0].headers["if-none-match"] == '"v2"'
    assert server.requests[0].headers["if-modified-since"] == "Wed, 25 Nov 2026 10:00:00 GMT"


def test_only_the_first_page_is_conditional(server, make_source, fetcher_for) -> None:
    server.route("/p", paged)
    source = make_source(url=server.url + "/p", records_path="results", pagination="page", page_size=10)
    run(source, fetcher_for(source), FetchState(etag='"old"'))
    assert [r.headers.get("if-none-match") for r in server.requests] == ['"old"', None, None]


def test_since_param_carries_the_checkpoint_on_every_page(server, make_source, fetcher_for) -> None:
    server.route("/p", paged)
    source = make_source(
        url=server.url + "/p",
        records_path="results",
        pagination="page",
        page_size=10,
        since_param="updated_after",
        incremental_field="id",
    )
    run(source, fetcher_for(source), FetchState(checkpoint=42))
    assert [r.query.get("updated_after") for r in server.requests] == ["42", "42", "42"]


def test_since_param_with_link_pagination(server, make_source, fetcher_for) -> None:
    def linked(request: Request) -> Response:
        headers = {"Link": '</l?page=2>; rel="next"'} if "page" not in request.query else {}
        return Response(200, "[]", headers=headers)

    server.route("/l", linked)
    source = make_source(url=server.url + "/l", pagination="link", since_param="since")
    run(source, fetcher_for(source), FetchState(checkpoint="2026-11-01T00:00:00Z"))
    assert [r.query.get("since") for r in server.requests] == ["2026-11-01T00:00:00Z"] * 2


def test_since_param_absent_without_a_checkpoint(server, make_source, fetcher_for) -> None:
    server.route("/x", Response(200, "[]"))
    source = make_source(url=server.url + "/x", since_param="since")
    run(source, fetcher_for(source), FetchState(checkpoint=None))
    assert "since" not in server.requests[0].query


def test_header_secret_is_expanded_from_env_and_kept_out_of_errors(server, make_source, monkeypatch) -> None:
    monkeypatch.setenv("POSTS_TOKEN", "tok-9f8e7d6c5b4a")

    def guarded(request: Request) -> Response:
        return Response(403, f"token {request.headers.get('authorization')} lacks scope")

    server.route("/private", guarded)
    source = make_source(url=server.url + "/private", headers={"Authorization": "Bearer ${POSTS_TOKEN}"})
    with pytest.raises(PermanentError) as info:
        run(source)  # the connector's own fetcher, built from the source
    assert server.requests[0].headers["authorization"] == "Bearer tok-9f8e7d6c5b4a"
    assert "tok-9f8e7d6c5b4a" not in str(info.value) and "HTTP 403" in str(info.value)


# -- local files -----------------------------------------------------------------------


def test_local_file_and_its_hash(make_source, cases) -> None:
    path = cases / "posts.json"
    source = make_source(url=str(path))
    extraction, items = run(source)
    assert ids(items) == [1, 2, 3, 4, 5]
    assert extraction.new_state == {"file_hash": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_local_file_with_the_same_hash_is_not_modified(make_source, cases) -> None:
    path = cases / "posts.json"
    source = make_source(url=f"file://{path}")
    state = FetchState(file_hash=hashlib.sha256(path.read_bytes()).hexdigest())
    extraction, items = run(source, state=state)
    assert extraction.not_modified and items == []


def test_local_file_errors_are_permanent(make_source, cases, tmp_path) -> None:
    with pytest.raises(PermanentError, match="malformed JSON"):
        run(make_source(url=str(cases / "malformed.json")))
    with pytest.raises(PermanentError, match="file not found"):
        run(make_source(url=str(tmp_path / "nope.json")))
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"id": n} for n in range(1000)]))
    with pytest.raises(PermanentError, match="larger than 1024 bytes"):
        run(make_source(url=str(big), max_response_bytes=1024))
