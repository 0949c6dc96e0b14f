"""A CSV file over HTTP, streamed into the reader (workers/sources/csv_stream.py,
remote_file.py): exact rows whatever the line ends, block cuts, encodings, resets,
resumes; the stage-level segment tests are in tests/workers/pipeline/fetch/test_segments_http.py."""

from __future__ import annotations

import gzip
import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.sources_config import SourceConfig
from tests.support.http_server import LocalHTTPServer, Response, ServedFile
from workers.sources import csv_source, csv_stream
from workers.sources.base import Boundary, FetchState, PermanentError, RawItem, TransientError
from workers.sources.csv_stream import LATIN1_FALLBACK, decide_encoding
from workers.sources.http import HttpFetcher

Row = tuple[Any, ...]


def as_rows(items: list[RawItem]) -> list[Row]:
    return [(i.line, i.record, i.error, i.raw_text) for i in items]


def local_rows(make_source: Callable[..., SourceConfig], path: Path, data: bytes, **fields: Any) -> list[Row]:
    path.write_bytes(data)
    extraction = csv_source.extract(make_source("csv", url=str(path), **fields), FetchState())
    return as_rows([i for i in extraction.items if isinstance(i, RawItem)])


def segments(source: SourceConfig, fetcher: HttpFetcher, *, every: int = 1,
             resume: dict[str, Any] | None = None) -> Iterator[tuple[list[RawItem], dict[str, Any] | None, Any]]:
    """Read the file as a chain of segments, each stopping at its `every`-th boundary:
    (items of the segment, the position it stopped at, its extraction)."""
    while True:
        extraction = csv_source.extract(source, FetchState(), fetcher, resume)
        assert extraction.batches is not None
        items: list[RawItem] = []
        stop = None
        seen = 0
        for batch in extraction.batches:
            if isinstance(batch, Boundary):
                seen += 1
                if seen == every:
                    stop = batch.position()
                    break
            else:
                items += batch.items()
        extraction.batches.close()
        yield items, stop, extraction
        if stop is None:
            return
        resume = stop


def read_in_segments(source: SourceConfig, fetcher: HttpFetcher, every: int = 1) -> list[Row]:
    return [row for items, _, _ in segments(source, fetcher, every=every) for row in as_rows(items)]


def people_csv(n: int, *, newline: str = "\r\n", version: str = "v1") -> bytes:
    lines = ["id,name,note"]
    for i in range(1, n + 1):
        note = '"two\nlines é"' if i % 7 == 0 else f"note {i}"
        lines.append(f"{i},name {i} {version},{note}")
    return (newline.join(lines) + newline).encode()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_source, "ROWS_PER_BATCH", 50)


# -- one read: the same rows as a local copy of the file ----------------------------------


@pytest.mark.parametrize("block", [7, 64 * 1024])
@pytest.mark.parametrize("case", ["broken_rows.csv", "bom_quoted.csv", "latin1.csv", "semicolon.csv"])
def test_a_streamed_file_gives_the_rows_a_local_copy_gives(
    server, make_source, fetcher_for, cases, tmp_path, monkeypatch, case: str, block: int
) -> None:
    monkeypatch.setattr(csv_stream, "READ_BLOCK", block)  # 7: lines, "\r\n" and "é" cut between reads
    data = (cases / case).read_bytes()
    server.route("/f.csv", ServedFile(data))
    delimiter = ";" if case == "semicolon.csv" else ","
    source = make_source("csv", url=server.url + "/f.csv", delimiter=delimiter)
    with fetcher_for(source) as fetcher:
        extraction = csv_source.extract(source, FetchState(), fetcher)
        streamed = as_rows([i for i in extraction.items if isinstance(i, RawItem)])
    assert streamed == local_rows(make_source, tmp_path / case, data, delimiter=delimiter)
    assert streamed  # the case has rows


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"], ids=["cr", "lf", "crlf"])
def test_every_kind_of_line_end_is_a_line_end(server, make_source, fetcher_for, tmp_path, monkeypatch,
                                              newline: str) -> None:
    monkeypatch.setattr(csv_stream, "READ_BLOCK", 5)
    data = people_csv(40, newline=newline) + b'41,"unterminated' + newline.encode() + b"42,x,y" + newline.encode()
    server.route("/f.csv", ServedFile(data))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        streamed = as_rows([i for i in csv_source.extract(source, FetchState(), fetcher).items
                            if isinstance(i, RawItem)])
    assert streamed == local_rows(make_source, tmp_path / "f.csv", data)
    assert [line for line, record, *_ in streamed if record is not None][:8] == [2, 3, 4, 5, 6, 7, 8, 10]
    assert streamed[-1][2] is not None and streamed[-1][3].startswith('41,"unterminated')


def test_a_body_has_no_size_cap_and_its_validators_and_hash_are_kept(server, make_source, fetcher_for,
                                                                     isolated_tmp) -> None:
    data = people_csv(5000)
    served = ServedFile(data)
    server.route("/big.csv", served)
    source = make_source("csv", url=server.url + "/big.csv", max_response_bytes=1024)  # caps documents only
    with fetcher_for(source) as fetcher:
        extraction = csv_source.extract(source, FetchState(), fetcher)
        assert list(isolated_tmp.iterdir()) == []  # streamed, never written to a temporary file
        count = sum(1 for i in extraction.items if isinstance(i, RawItem))
    assert count == 5000
    assert extraction.new_state == {
        "etag": served.etag, "last_modified": served.last_modified, "file_hash": hashlib.sha256(data).hexdigest()
    }


def test_boundaries_hold_the_exact_offset_line_and_identity(server, make_source, fetcher_for,
                                                            small_batches) -> None:
    data = people_csv(120)
    served = ServedFile(data)
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        extraction = csv_source.extract(source, FetchState(), fetcher)
        assert extraction.batches is not None
        stream = list(extraction.batches)
    boundaries = [b for b in stream if isinstance(b, Boundary)]
    assert len(boundaries) == 2
    first = boundaries[0].position()
    records = data.split(b"\r\n")  # a note's own line break is "\n"
    # The header and 50 rows, of which 7 span two physical lines: 58 lines.
    assert first["offset"] == sum(len(record) + 2 for record in records[:51])
    assert (first["line"], first["rows"], first["encoding"]) == (58, 50, "utf-8")
    assert first["header"] == ["id", "name", "note"]
    assert first["identity"] == {
        "etag": served.etag, "last_modified": served.last_modified, "size": len(data),
        "head_sha256": hashlib.sha256(data).hexdigest(), "ranges": True,
    }
    assert boundaries[0].progress == {"bytes_read": first["offset"], "bytes_total": len(data), "items": 50}


# -- resuming ------------------------------------------------------------------------------


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_each_segment_goes_on_where_the_last_stopped(server, make_source, fetcher_for, small_batches,
                                                     ranges: bool) -> None:
    data = people_csv(400) + b"x,not enough\r\n"
    served = ServedFile(data, ranges=ranges)
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        whole = read_in_segments(source, fetcher, every=10**6)
        server.requests.clear()
        chain = list(segments(source, fetcher))
    assert [row for items, _, _ in chain for row in as_rows(items)] == whole
    assert len(chain) == 9 and all(extraction.restarted is None for *_, extraction in chain)
    stops = [stop["offset"] for _, stop, _ in chain[:-1] if stop]
    if ranges:
        assert [r.headers.get("range") for r in server.requests] == [None] + [f"bytes={o}-" for o in stops]
        assert {r.headers.get("if-range") for r in server.requests[1:]} == {served.etag}
    else:  # the server sends it all each time; the stream skips to the offset
        assert len(server.requests) == len(chain)
    assert whole[-1][2] == "expected 3 fields as in the header, found 2" and whole[-1][3] == "x,not enough"


def test_a_position_at_the_very_end_reads_nothing_more(server, make_source, fetcher_for, small_batches) -> None:
    data = people_csv(100).replace(b'"two\nlines \xc3\xa9"', b"one line")  # 100 rows: two full batches
    server.route("/f.csv", ServedFile(data))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        chain = list(segments(source, fetcher, every=2))
    (_, stop, _), (last, end, extraction) = chain
    assert stop is not None and stop["offset"] == len(data)
    assert last == [] and end is None and extraction.restarted is None
    assert server.requests[-1].headers["range"] == f"bytes={len(data)}-"  # answered 416


def test_a_long_header_is_read_again_from_the_top_instead_of_kept(server, make_source, fetcher_for,
                                                                  small_batches, monkeypatch) -> None:
    monkeypatch.setattr(csv_stream, "HEADER_LIMIT", 5)
    data = people_csv(200)
    server.route("/f.csv", ServedFile(data))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        whole = read_in_segments(source, fetcher, every=10**6)
        server.requests.clear()
        chain = list(segments(source, fetcher))
    assert chain[0][1] is not None and chain[0][1]["header"] is None
    assert [row for items, _, _ in chain for row in as_rows(items)] == whole
    assert all("range" not in r.headers for r in server.requests)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_file_replaced_between_segments_is_read_from_the_top(server, make_source, fetcher_for, small_batches,
                                                                ranges: bool) -> None:
    served = ServedFile(people_csv(300), ranges=ranges)
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        chain = segments(source, fetcher)
        first, stop, _ = next(chain)
        served.replace(people_csv(300, version="v2"))
        second, _, extraction = next(chain)
    assert stop is not None and first[0].record == {"id": "1", "name": "name 1 v1", "note": "note 1"}
    assert extraction.restarted is not None and "changed since the run started" in extraction.restarted
    assert "ETag" in extraction.restarted
    assert second[0].line == 2 and second[0].record == {"id": "1", "name": "name 1 v2", "note": "note 1"}
    assert extraction.new_state["etag"] == served.etag


def test_without_validators_the_size_and_first_block_tell_versions_apart(server, make_source, fetcher_for,
                                                                         small_batches) -> None:
    served = ServedFile(people_csv(300), ranges=False, validators=False)
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        chain = segments(source, fetcher)
        next(chain)
        served.replace(people_csv(300, version="v3"))  # same size: only the first block differs
        _, _, extraction = next(chain)
    assert extraction.restarted is not None and "first block" in extraction.restarted


def test_a_file_now_shorter_than_the_position_is_read_from_the_top(server, make_source, fetcher_for,
                                                                   small_batches) -> None:
    current = [people_csv(5000)]
    # No validators, no length (chunked): only the first block and the length read tell.
    server.route("/f.csv", lambda _request: Response(200, iter([current[0]]), content_type="text/csv"))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        chain = segments(source, fetcher, every=85)  # stops after 4,250 rows
        _, stop, _ = next(chain)
        current[0] = people_csv(4000)  # the same first block, shorter than the position
        assert stop is not None and stop["offset"] > len(current[0])
        rows, _, extraction = next(chain)
    assert extraction.restarted is not None and "shorter" in extraction.restarted
    assert rows[0].line == 2 and rows[0].record == {"id": "1", "name": "name 1 v1", "note": "note 1"}


# -- failures mid-body -----------------------------------------------------------------------


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_connection_reset_mid_body_reconnects_at_the_byte_reached(server, make_source, fetcher_for,
                                                                    ranges: bool) -> None:
    data = people_csv(20_000)
    served = ServedFile(data, ranges=ranges)
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        whole = read_in_segments(source, fetcher, every=10**6)
        server.requests.clear()
        served.cut_at = [100_000, 300_001]
        again = csv_source.extract(source, FetchState(), fetcher)
        rows = as_rows([i for i in again.items if isinstance(i, RawItem)])
    assert rows == whole
    assert len(server.requests) == 3
    if ranges:
        ranges_asked = [r.headers.get("range") for r in server.requests]
        assert ranges_asked[0] is None and all(asked and int(asked[6:-1]) >= 90_000 for asked in ranges_asked[1:])
    assert again.new_state["file_hash"] == hashlib.sha256(data).hexdigest()  # still one read from the top


def test_a_reset_within_the_first_block_opens_the_file_again(server, make_source, fetcher_for) -> None:
    data = people_csv(5000)
    served = ServedFile(data)
    served.cut_at = [1000]
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        items = [i for i in csv_source.extract(source, FetchState(), fetcher).items if isinstance(i, RawItem)]
    assert len(items) == 5000 and items[-1].record == {"id": "5000", "name": "name 5000 v1", "note": "note 5000"}
    assert [r.headers.get("range") for r in server.requests] == [None, None]


def test_a_file_replaced_while_a_segment_reads_it_fails_the_segment(server, make_source, fetcher_for) -> None:
    served = ServedFile(people_csv(20_000))
    server.route("/f.csv", served)
    source = make_source("csv", url=server.url + "/f.csv")
    served.cut_at = [200_000]
    with fetcher_for(source) as fetcher:
        extraction = csv_source.extract(source, FetchState(), fetcher)
        next(extraction.items)
        served.replace(people_csv(20_000, version="v2"))  # the response under way goes on with v1
        with pytest.raises(TransientError, match="changed while being read"):
            list(extraction.items)


def test_a_gzip_encoded_body_resumes_by_skipping_decoded_bytes(server, make_source, fetcher_for,
                                                               small_batches) -> None:
    data = people_csv(300)
    packed = gzip.compress(data)

    def handler(_request: object) -> Response:
        headers = {"Content-Encoding": "gzip", "ETag": '"g1"', "Accept-Ranges": "bytes"}
        return Response(200, packed, headers=headers, content_type="text/csv")

    server.route("/f.csv", handler)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        whole = read_in_segments(source, fetcher, every=10**6)
        chain = list(segments(source, fetcher))
    assert len(chain) > 3 and [row for items, _, _ in chain for row in as_rows(items)] == whole
    stop = chain[0][1]
    assert stop is not None and stop["identity"]["ranges"] is False and stop["identity"]["size"] is None
    assert len(whole) == 300


# -- encodings -------------------------------------------------------------------------------


def test_bytes_past_the_first_block_that_are_not_utf8_are_read_as_latin1(server, make_source, fetcher_for) -> None:
    head = people_csv(4000)  # UTF-8 ("é" every 7th row), longer than the first block
    assert len(head) > 64 * 1024
    data = head + "4001,Zürich,ok\r\n4002,Ørsted,ok\r\n".encode("latin-1")
    server.route("/f.csv", ServedFile(data))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        items = [i for i in csv_source.extract(source, FetchState(), fetcher).items if isinstance(i, RawItem)]
    assert all(i.error is None for i in items) and len(items) == 4002
    assert items[6].record is not None and items[6].record["note"] == "two\nlines é"  # UTF-8 read as UTF-8
    assert items[-2].record == {"id": "4001", "name": "Zürich", "note": "ok"}
    assert items[-1].record == {"id": "4002", "name": "Ørsted", "note": "ok"}


def test_the_first_block_decides_the_encoding() -> None:
    assert decide_encoding("Zoë".encode(), whole=True) == "utf-8"
    assert decide_encoding("Zoë".encode()[:-1], whole=False) == "utf-8"  # "ë" cut at the block's end
    assert decide_encoding("Zoë".encode()[:-1], whole=True) == "latin-1"
    assert decide_encoding("Zoë!".encode("latin-1"), whole=False) == "latin-1"
    assert b"a\xe9b\xc3\xa9".decode("utf-8", LATIN1_FALLBACK) == "aébé"


# -- unchanged since the last run --------------------------------------------------------------


def test_the_first_segment_asks_whether_the_file_changed(server, make_source, fetcher_for) -> None:
    served = ServedFile(people_csv(10))

    def handler(request: Any) -> Response:
        if request.headers.get("if-none-match") == served.etag:
            return Response(304)
        return served(request)

    server.route("/f.csv", handler)
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher:
        unchanged = csv_source.extract(source, FetchState(etag=served.etag), fetcher)
        small = csv_source.extract(source, FetchState(file_hash=hashlib.sha256(people_csv(10)).hexdigest()), fetcher)
    assert unchanged.not_modified and small.not_modified  # a whole file in the first block: by its hash


def test_abandoned_items_close_the_connection(make_source) -> None:
    closed: list[bool] = []

    def endless(_request: object) -> Response:
        def body() -> Iterator[bytes]:
            try:
                yield b"id,v\n"
                n = 0
                while True:
                    n += 1
                    yield b"".join(b"%d,%d\n" % (i, i) for i in range(n * 1000, n * 1000 + 1000))
            finally:
                closed.append(True)

        return Response(200, body(), content_type="text/csv")

    with LocalHTTPServer(send_buffer=4096) as server:
        server.route("/f.csv", endless)
        source = make_source("csv", url=server.url + "/f.csv")
        extraction = csv_source.extract(source, FetchState())  # the fetcher is its own
        assert isinstance(next(extraction.items), RawItem)
        del extraction
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:
            time.sleep(0.05)
    assert closed == [True]


def test_an_empty_body_is_a_permanent_error(server, make_source, fetcher_for) -> None:
    server.route("/f.csv", ServedFile(b""))
    source = make_source("csv", url=server.url + "/f.csv")
    with fetcher_for(source) as fetcher, pytest.raises(PermanentError, match="empty"):
        csv_source.extract(source, FetchState(), fetcher)


def test_a_stalled_body_is_retried_then_transient(raw_server, make_source, fast_retry) -> None:
    sent = b"id,v\n" + b"".join(b"%d,x\n" % i for i in range(20_000))  # past the first block

    def stall(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(sent) + 1000, sent))
        time.sleep(5)

    upstream = raw_server(stall)
    source = make_source("csv", url=upstream.url, timeout_s=0.5)
    with HttpFetcher.for_source(source, retry=fast_retry) as fetcher:
        extraction = csv_source.extract(source, FetchState(), fetcher)
        with pytest.raises(TransientError, match="stalled"):
            list(extraction.items)
    assert upstream.connections == 3  # the first, then two reconnections at the byte reached
