"""A CSV file over HTTP through the real worker: larger than max_response_bytes (100 MiB)
with the default settings, and read in segments, each asking only for the rest of the file.

The server generates the file as it sends it (fixed-width rows, so any byte offset maps to
a row), never holding it: ServedFile with generated Content, honouring Range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.sources_config import SourceConfig
from tests.conftest import WorkerProcess
from tests.support.http_server import Content, LocalHTTPServer, ServedFile
from tests.support.pipeline import ingest
from workers.sources.http import DEFAULT_MAX_RESPONSE_BYTES

HEADER = b"id,name,note\r\n"
ROW_BYTES = 1024
ROWS = 105_000
ROWS_PER_PIECE = 64


def size_of(rows: int) -> int:
    return len(HEADER) + rows * ROW_BYTES


SIZE = size_of(ROWS)


def row(i: int) -> bytes:
    start = b"%d,name %d," % (i, i)
    return start + b"n" * (ROW_BYTES - len(start) - 2) + b"\r\n"


def generated(rows: int) -> Content:
    """A file of `rows` rows, made as it is sent: its bytes from any offset, a few rows at a time."""

    def chunks(start: int) -> Iterator[bytes]:
        if start < len(HEADER):
            yield HEADER[start:]
        index, within = divmod(max(0, start - len(HEADER)), ROW_BYTES)
        while index < rows:
            piece = b"".join(row(i) for i in range(index, min(index + ROWS_PER_PIECE, rows)))
            yield piece[within:]
            within = 0
            index += ROWS_PER_PIECE

    return Content(size=size_of(rows), chunks=chunks)


def check_loaded(db: psycopg.Connection, name: str, rows: int) -> None:
    stored = db.execute(
        "SELECT count(*), min(external_id::bigint), max(external_id::bigint) FROM records WHERE source = %s", (name,)
    ).fetchone()
    assert stored == (rows, 0, rows - 1)
    last = db.execute("SELECT title, data FROM records WHERE source = %s AND external_id = %s",
                      (name, str(rows - 1))).fetchone()
    assert last is not None and last[0] == f"name {rows - 1}"
    assert last[1]["note"] == row(rows - 1).rstrip(b"\r\n").split(b",")[2].decode()


@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(600)
def test_a_csv_over_http_larger_than_100_mib_ingests_with_default_settings(db: psycopg.Connection) -> None:
    assert SIZE > DEFAULT_MAX_RESPONSE_BYTES
    served = ServedFile(generated(ROWS))
    with LocalHTTPServer(send_buffer=64 * 1024) as server:
        server.route("/export.csv", served)
        config = SourceConfig(name="export", kind="csv", url=server.url + "/export.csv", id_field="id",
                              fields={"title": "name"})
        assert config.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES
        run = ingest(db, config, timeout_s=540)
        asked = [r.headers.get("range") for r in server.requests]

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert (run["fetched"], run["inserted"], run["rejected"]) == (ROWS, ROWS, 0)
    assert run["fetch_progress"]["bytes_total"] == SIZE
    check_loaded(db, "export", ROWS)
    # However many segments the fetch took, each asked only for the rest of the file.
    assert asked[0] is None and len(asked) == run["fetch_segments"]
    assert served.served < 1.2 * SIZE


@pytest.mark.timeout(600)
def test_a_worker_reads_a_csv_over_http_in_segments_each_from_its_offset(
    db: psycopg.Connection, session_worker_stopped: Callable[[], AbstractContextManager[None]]
) -> None:
    rows = 40_000
    served = ServedFile(generated(rows))
    with session_worker_stopped(), LocalHTTPServer(send_buffer=64 * 1024) as server:
        server.route("/export.csv", served)
        config = SourceConfig(name="segmented", kind="csv", url=server.url + "/export.csv", id_field="id",
                              fields={"title": "name"})
        # A worker of its own, handing on at the first boundary after a chunk (a boundary
        # comes every 5,000 rows, and the rows in flight make a segment about 15 MB).
        worker = WorkerProcess("segments", extra_env={"FETCH_SEGMENT_CHUNKS": "1"}).start()
        try:
            run = ingest(db, config, timeout_s=300)
        finally:
            worker.stop()
        asked = [r.headers.get("range") for r in server.requests]

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert (run["fetched"], run["inserted"]) == (rows, rows)
    assert run["fetch_segments"] >= 3 and len(asked) == run["fetch_segments"]
    assert asked[0] is None and all(a is not None and a.startswith("bytes=") for a in asked[1:])
    offsets = [int(a[len("bytes="):-1]) for a in asked[1:] if a]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), "each segment further on"
    assert served.served < 1.2 * size_of(rows)
    check_loaded(db, "segmented", rows)
