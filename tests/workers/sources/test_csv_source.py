"""csv connector: encodings, quoting, broken rows with line numbers, hashing, temp files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.http_server import Response
from workers.sources import csv_source
from workers.sources.base import Boundary, FetchState, PermanentError, RawItem, RowBatch, TabularRow


def run(source, state: FetchState | None = None, fetcher=None):  # type: ignore[no-untyped-def]
    extraction = csv_source.extract(source, state or FetchState(), fetcher)
    return extraction, [item for item in extraction.items if not isinstance(item, Boundary)]


def csv_at(make_source, path: Path, **fields):  # type: ignore[no-untyped-def]
    return make_source("csv", url=str(path), **fields)


def test_utf8_bom_crlf_quoted_commas_newlines_and_quotes(make_source, cases) -> None:
    _, items = run(csv_at(make_source, cases / "bom_quoted.csv"))
    assert [(item.line, item.record) for item in items] == [
        (2, {"id": "1", "name": "Zoë", "notes": "plain, with comma"}),
        (3, {"id": "2", "name": "O'Brien, Mary", "notes": "line one\r\nline two"}),
        (5, {"id": "3", "name": "Łukasz", "notes": 'she said "hi"'}),
    ]


def test_latin1_fallback(make_source, cases) -> None:
    _, items = run(csv_at(make_source, cases / "latin1.csv"))
    assert [item.record for item in items] == [{"id": "1", "city": "Zürich"}, {"id": "2", "city": "Orléans"}]


def test_utf8_multibyte_split_across_read_chunks_is_still_utf8(make_source, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("workers.sources.files.READ_CHUNK_BYTES", 7)  # split "é" between chunks
    path = tmp_path / "split.csv"
    path.write_bytes("id,v\n1,abcdé\n2,ñandú\n".encode())
    _, items = run(csv_at(make_source, path))
    assert [item.record["v"] for item in items if item.record] == ["abcdé", "ñandú"]


def test_broken_rows_are_rejected_with_line_numbers_and_the_rest_load(make_source, cases) -> None:
    _, items = run(csv_at(make_source, cases / "broken_rows.csv"))
    good = [(i.line, i.record["id"]) for i in items if i.record is not None]
    bad = [(i.line, i.error, i.raw_text) for i in items if i.record is None]
    assert good == [(2, "1"), (4, "3"), (6, "5"), (10, "7")]
    assert bad == [
        (3, "expected 3 fields as in the header, found 2", "2,Bob"),
        (5, "row contains a NUL byte", "4,D\x00n,22"),
        (8, "expected 3 fields as in the header, found 4", "6,Fay,60,extra"),
    ]
    assert next(i for i in items if i.line == 6).record == {"id": "5", "name": "Eve\nSecond", "age": "50"}


def test_a_field_longer_than_pythons_default_limit_loads(make_source, tmp_path) -> None:
    path = tmp_path / "long_field.csv"
    path.write_text("id,text\n1,ok\n2," + "x" * 1_000_000 + "\n3,fine\n")  # Python's csv default: 131,072
    _, items = run(csv_at(make_source, path))
    assert [(i.line, i.record is None) for i in items] == [(2, False), (3, False), (4, False)]
    assert len(items[1].record["text"]) == 1_000_000


def test_field_over_the_configured_limit_is_one_rejection(make_source, tmp_path) -> None:
    path = tmp_path / "huge_field.csv"
    path.write_text("id,text\n1,ok\n2," + "x" * 200_000 + "\n3,fine\n")
    _, items = run(csv_at(make_source, path, max_field_chars=100_000))
    assert [(i.line, i.record is None) for i in items] == [(2, False), (3, True), (4, False)]
    rejected = items[1]
    assert rejected.error is not None and "field larger than field limit" in rejected.error
    assert rejected.raw_text is not None and len(rejected.raw_text) <= csv_source.RAW_TEXT_LIMIT + 20


def test_delimiter(make_source, cases) -> None:
    _, items = run(csv_at(make_source, cases / "semicolon.csv", delimiter=";"))
    assert [item.record for item in items] == [
        {"id": "1", "label": "a,b", "price": "3,50"},
        {"id": "2", "label": "c", "price": "4"},
    ]


def test_new_state_is_the_file_hash(make_source, cases) -> None:
    path = cases / "latin1.csv"
    extraction, _ = run(csv_at(make_source, path))
    assert extraction.new_state == {"file_hash": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_same_hash_is_not_modified_before_any_parsing(make_source, tmp_path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")  # would be a PermanentError if it were parsed
    state = FetchState(file_hash=hashlib.sha256(b"").hexdigest())
    extraction, items = run(csv_at(make_source, path), state)
    assert extraction.not_modified and items == []


def test_changed_file_is_read_again(make_source, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"id\n1\n")
    first, _ = run(csv_at(make_source, path))
    path.write_bytes(b"id\n1\n2\n")
    second, items = run(csv_at(make_source, path), FetchState(file_hash=first.new_state["file_hash"]))
    assert not second.not_modified and len(items) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\n\n\n", "empty"),
        (b",,\n1,2,3\n", r"header row \(line 1\) is empty"),
        (b"id,name,id\n1,2,3\n", "duplicate column"),
    ],
)
def test_unusable_header_is_permanent(make_source, tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(PermanentError, match=message):
        run(csv_at(make_source, path))


def test_missing_file_is_permanent(make_source, tmp_path) -> None:
    with pytest.raises(PermanentError, match="file not found"):
        run(csv_at(make_source, tmp_path / "nope.csv"))


def test_rows_stream_a_batch_at_a_time(make_source, tmp_path) -> None:
    """The file is read ROWS_PER_BATCH rows at a time, never loaded whole."""
    path = tmp_path / "many.csv"
    with path.open("w") as out:
        out.write("id,v\n")
        for n in range(50_000):
            out.write(f"{n},{n * 2}\n")
    extraction = csv_source.extract(csv_at(make_source, path), FetchState())
    first: RawItem = next(extraction.items)
    assert first.record == {"id": "0", "v": "0"} and first.line == 2
    assert sum(1 for item in extraction.items if isinstance(item, RawItem)) == 49_999
    batches = csv_source.extract(csv_at(make_source, path), FetchState()).batches
    assert batches is not None
    stream = list(batches)
    full = 50_000 // csv_source.ROWS_PER_BATCH
    assert [len(batch) for batch in stream if isinstance(batch, RowBatch)] == [csv_source.ROWS_PER_BATCH] * full
    # A place to resume after every full batch: the byte offset and line of the next row.
    boundaries = [b for b in stream if isinstance(b, Boundary)]
    assert len(boundaries) == full
    first_position = boundaries[0].position()
    expected_offset = len("id,v\n") + sum(len(f"{n},{n * 2}\n") for n in range(csv_source.ROWS_PER_BATCH))
    assert (first_position["offset"], first_position["line"]) == (expected_offset, 1 + csv_source.ROWS_PER_BATCH)


def rows_of(path: Path) -> csv_source.CsvRows:
    return csv_source.CsvRows(path, "utf-8", ",", str(path))


@pytest.mark.parametrize("size", [1, 2, 3, 5000])
@pytest.mark.parametrize("case", ["broken_rows.csv", "bom_quoted.csv"])
def test_batches_hold_the_rows_of_items_in_the_same_order(cases, case: str, size: int) -> None:
    expected = list(rows_of(cases / case).items())
    batches = list(rows_of(cases / case).batches(size))
    assert all(0 < len(batch) <= size for batch in batches)
    assert [item for batch in batches for item in batch.items()] == expected
    assert sum(len(batch.values) for batch in batches) == sum(1 for item in expected if item.error is None)


def test_extraction_batches_and_items_share_one_stream(make_source, cases) -> None:
    extraction = csv_source.extract(csv_at(make_source, cases / "broken_rows.csv"), FetchState())
    assert extraction.batches is not None
    first = next(extraction.batches)
    assert [item.line for item in first.items()] == [2, 3, 4, 5, 6, 8, 10]
    assert list(extraction.items) == []  # the batch took them all
    assert extraction.final_progress["items"] == 7


def test_a_batch_makes_items_for_the_chosen_rows_and_every_rejection_in_file_order() -> None:
    columns = ["id"]
    bad = [RawItem(line=n, error=f"bad {n}") for n in (1, 4, 9)]
    batch = RowBatch(columns, [["a"], ["b"], ["c"]], [2, 3, 5], [(0, bad[0]), (2, bad[1]), (3, bad[2])])
    assert [item.line for item in batch.items()] == [1, 2, 3, 4, 5, 9]
    chosen = batch.items([b"A", b"B", b"C"], only=[1])
    assert [(item.line, item.digest) for item in chosen] == [(1, None), (3, b"B"), (4, None), (9, None)]
    assert chosen[1] == TabularRow(["b"], 3, columns, b"B")
    assert len(batch) == 6


# -- over HTTP (more in test_csv_over_http.py) ------------------------------------------


def test_csv_over_http_is_streamed_and_parsed_without_a_temp_file(
    server, make_source, fetcher_for, cases, isolated_tmp
) -> None:
    body = (cases / "broken_rows.csv").read_bytes()
    server.route("/rows.csv", Response(200, body, headers={"ETag": '"r1"'}, content_type="text/csv"))
    source = make_source("csv", url=server.url + "/rows.csv")
    extraction, items = run(source, fetcher=fetcher_for(source))
    assert [i.line for i in items] == [2, 3, 4, 5, 6, 8, 10]
    assert extraction.new_state == {
        "file_hash": hashlib.sha256(body).hexdigest(),
        "etag": '"r1"',
        "last_modified": None,
    }
    assert list(isolated_tmp.iterdir()) == []


def test_csv_over_http_304_and_same_hash(server, make_source, fetcher_for, isolated_tmp) -> None:
    body = b"id\n1\n"

    def handler(request):  # type: ignore[no-untyped-def]
        if request.headers.get("if-none-match") == '"r1"':
            return Response(304)
        return Response(200, body, content_type="text/csv")

    server.route("/rows.csv", handler)
    source = make_source("csv", url=server.url + "/rows.csv")
    by_etag, _ = run(source, FetchState(etag='"r1"'), fetcher_for(source))
    by_hash, _ = run(source, FetchState(file_hash=hashlib.sha256(body).hexdigest()), fetcher_for(source))
    assert by_etag.not_modified and by_hash.not_modified
    assert list(isolated_tmp.iterdir()) == []


def test_a_bad_header_over_http_is_permanent(server, make_source, fetcher_for) -> None:
    server.route("/rows.csv", Response(200, b"id,name,id\n1,2,3\n", content_type="text/csv"))
    source = make_source("csv", url=server.url + "/rows.csv")
    with pytest.raises(PermanentError, match="duplicate column"):
        run(source, fetcher=fetcher_for(source))
