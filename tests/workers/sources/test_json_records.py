"""JsonRecords reads the records of a document one at a time, exactly as json.loads would.

The documents are cut into chunks of every size and the window is shrunk to a few bytes
(READ_BYTES), so values are split by the window's end everywhere: inside strings, escapes,
numbers, keys, between a value and its comma.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http_server import Response
from workers.sources import http_json, json_records
from workers.sources.base import FetchState, PermanentError, RawItem
from workers.sources.http import SPOOL_IN_MEMORY_BYTES
from workers.sources.json_records import JsonRecords, Rejected, streamable


@pytest.fixture(autouse=True)
def tiny_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_records, "READ_BYTES", 3)


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(document: str | bytes, path: str = "", chunk: int = 5) -> tuple[list[Any], Any]:
    data = document.encode() if isinstance(document, str) else document
    reader = JsonRecords(chunked(data, chunk), path, "doc")
    return list(reader), reader.rest


def as_loaded(element: Any) -> Any:
    """What json.loads made of the element: a record as is, a rejection's raw text parsed."""
    return json.loads(element.raw_text) if isinstance(element, Rejected) else element


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
elements = st.lists(st.dictionaries(st.text(max_size=6), values, max_size=5) | values, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=elements,
    before=st.dictionaries(st.sampled_from(["meta", "page", "x y", "é"]), values, max_size=3),
    after=st.dictionaries(st.sampled_from(["next", "links", "total"]), values, max_size=3),
    chunk=st.integers(min_value=1, max_value=40),
    indent=st.sampled_from([None, 0, 2]),
    ensure_ascii=st.booleans(),
)
def test_streamed_records_equal_json_loads(records, before, after, chunk, indent, ensure_ascii) -> None:
    document = {**before, "result": {"data": records}, **after}
    text = json.dumps(document, indent=indent, ensure_ascii=ensure_ascii)

    streamed, rest = read(text, "result.data", chunk)

    assert [as_loaded(element) for element in streamed] == json.loads(text)["result"]["data"]
    assert all(isinstance(element, dict) != isinstance(element, Rejected) for element in streamed)
    assert rest == {**before, "result": {"data": []}, **after}


@settings(max_examples=100, deadline=None)
@given(records=elements, chunk=st.integers(min_value=1, max_value=40), encoding=st.sampled_from(
    ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
))
def test_every_encoding_json_loads_reads(records, chunk, encoding) -> None:
    data = json.dumps(records, ensure_ascii=False).encode(encoding, "surrogatepass")
    streamed, _ = read(data, "", chunk)
    assert [as_loaded(element) for element in streamed] == json.loads(data)


def test_non_objects_are_rejected_with_their_raw_text() -> None:
    streamed, _ = read('[{"id": 1}, "just a string", 42, null, [1,  2], {"id": 2}]')
    assert streamed == [
        {"id": 1},
        Rejected("not an object", '"just a string"'),
        Rejected("not an object", "42"),
        Rejected("not an object", "null"),
        Rejected("not an object", "[1,  2]"),
        {"id": 2},
    ]


def test_big_integers_stay_ints_and_floats_stay_floats() -> None:
    streamed, _ = read('[{"id": 123456789012345678901234567890, "f": 0.1, "e": 1E2, "inf": 1e400, "neg": -0}]')
    (record,) = streamed
    assert record == {"id": 123456789012345678901234567890, "f": 0.1, "e": 100.0, "inf": float("inf"), "neg": 0}
    assert type(record["id"]) is int and type(record["e"]) is float


def test_deep_nesting_and_huge_numbers_reject_one_element_each() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    tricky = '{"s": "]]]\\"[[[", "deep": "x"}'
    huge = "9" * 5000
    elements = ['{"id": 1}', f'{{"id": 2, "x": {deep}}}', deep, f'{{"id": 3, "n": {huge}}}', huge, tricky]
    document = '{"data": [' + ", ".join(elements) + "]}"
    streamed, rest = read(document, "data", chunk=4096)
    assert streamed[0] == {"id": 1}
    assert [(e.reason, len(e.raw_text)) for e in streamed[1:5]] == [
        ("nested too deeply", json_records.RAW_TEXT_LIMIT + len("...[truncated]")),
        ("nested too deeply", json_records.RAW_TEXT_LIMIT + len("...[truncated]")),
        ("number too large", len(f'{{"id": 3, "n": {huge}}}')),
        ("number too large", 5000),
    ]
    assert streamed[1].raw_text.startswith('{"id": 2, "x": [[[')
    assert streamed[5] == {"s": ']]]"[[[', "deep": "x"}
    assert rest == {"data": []}


@pytest.mark.parametrize(
    "document",
    [
        '[{"id": 1}, {"id": 2,]',
        '[{"id": 1}\n, {"id": 2}\n, {"id": 3 "x"}]',
        '{"data": [{"id": 1}], "after": [1,]}',
        '[{"id": 1}] trailing',
        "",
        '[{"id": 1}',
        '[{"id": "unterminated}]',
        '{"data": [], "x": 1 "y": 2}',
    ],
)
def test_syntax_errors_fail_the_document_where_json_says(document: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(document)
    path = "data" if document.startswith("{") else ""
    with pytest.raises(PermanentError) as caught:
        read(document, path, chunk=3)
    assert f"malformed JSON: {expected.value.msg} at line {expected.value.lineno} column {expected.value.colno}" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        ('{"data": "oops"}', "data", "records_path 'data' holds a str"),
        ('{"other": []}', "data", "records_path 'data' not found"),
        ('{"data": null}', "data", "records_path 'data' not found"),
        ('{"a": {"b": 1}}', "a.b.c", "records_path 'a.b.c' not found"),
        ('{"a": [1]}', "a.b", "records_path 'a.b' not found"),
        ("[1]", "a", "records_path 'a' not found"),
        ("42", "", "records_path '' holds a int"),
        ('{"data": [1], "data": [2]}', "data", "appears twice"),
        (b'[{"id": "\xff"}]', "", "not UTF-8/16/32 text"),
    ],
)
def test_a_document_without_a_record_list_fails_as_before(document, path: str, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        read(document, path)


def test_a_single_object_is_one_record_and_stays_in_rest() -> None:
    assert read('{"data": {"id": 7}, "meta": {"next": "c2"}}', "data") == (
        [{"id": 7}],
        {"data": {"id": 7}, "meta": {"next": "c2"}},
    )


@pytest.mark.parametrize(
    ("records_path", "pagination", "cursor_path", "streams"),
    [
        ("data", "cursor", "meta.next", True),
        ("", "none", "meta.next", True),
        ("data", "link", "data.0.id", True),
        ("data", "cursor", "data.-1.id", False),
        ("data", "cursor", "data", False),
        ("", "cursor", "meta.next", False),
        ("results.0.items", "none", "meta.next", False),
        ("data", "cursor", "database.next", True),
    ],
)
def test_which_sources_stream(records_path: str, pagination: str, cursor_path: str, streams: bool) -> None:
    assert streamable(records_path, pagination, cursor_path) is streams


# -- through the connector --------------------------------------------------------------


def test_a_remote_body_past_the_in_memory_spool_is_read_record_by_record(server, make_source, fetcher_for) -> None:
    body = json.dumps({"meta": {"count": 3000}, "data": [{"id": n, "pad": "é" * 1000} for n in range(3000)]})
    assert len(body) > SPOOL_IN_MEMORY_BYTES
    server.route("/big", Response(200, body))
    source = make_source(url=server.url + "/big", records_path="data")
    items = [item for item in http_json.extract(source, FetchState(), fetcher_for(source)).items
             if isinstance(item, RawItem)]
    assert [(item.record["id"], item.line) for item in items] == [(n, n + 1) for n in range(3000)]
    assert items[-1].record == {"id": 2999, "pad": "é" * 1000}


def test_cursor_pagination_reads_the_cursor_beside_streamed_records(server, make_source, fetcher_for) -> None:
    pages = {
        "": {"data": [{"id": 1}, {"id": 2}], "meta": {"next": "c2"}},
        "c2": {"meta": {"next": "c3"}, "data": [{"id": 3}]},
        "c3": {"data": [], "meta": {"next": None}},
    }
    server.route("/c", lambda request: Response(200, json.dumps(pages[request.query.get("cursor", "")])))
    source = make_source(url=server.url + "/c", records_path="data", pagination="cursor")
    items = [item for item in http_json.extract(source, FetchState(), fetcher_for(source)).items
             if isinstance(item, RawItem)]
    assert [(item.record["id"], item.line) for item in items] == [(1, 1), (2, 2), (3, 3)]


def test_a_cursor_inside_the_records_still_works_by_parsing_whole(server, make_source, fetcher_for) -> None:
    pages = {"": [{"id": 1}, {"id": 2}], "2": [{"id": 3}], "3": []}
    server.route("/c", lambda request: Response(200, json.dumps({"data": pages[request.query.get("after", "")]})))
    source = make_source(
        url=server.url + "/c", records_path="data", pagination="cursor", cursor_param="after",
        next_cursor_path="data.-1.id",
    )
    items = [item for item in http_json.extract(source, FetchState(), fetcher_for(source)).items
             if isinstance(item, RawItem)]
    assert [item.record["id"] for item in items] == [1, 2, 3]


def test_hostile_records_in_a_local_file_are_single_rejections(make_source, tmp_path) -> None:
    path = tmp_path / "hostile.json"
    deep = "[" * 50_000 + "]" * 50_000
    path.write_text(f'{{"data": [{{"id": 1, "big": 123456789012345678901234567890}}, {{"id": 2, "x": {deep}}}, '
                    f'{{"id": 3, "n": {"1" * 4400}}}, {{"id": 4}}]}}')
    source = make_source(url=str(path), records_path="data")
    items = list(http_json.extract(source, FetchState()).items)
    assert [(item.line, item.error) for item in items] == [
        (1, None), (2, "nested too deeply"), (3, "number too large"), (4, None)
    ]
    assert items[0].record == {"id": 1, "big": 123456789012345678901234567890}
    assert items[1].raw_text is not None and items[1].raw_text.startswith('{"id": 2, "x": [[[[')
