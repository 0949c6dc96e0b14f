"""A large JSON document through the real worker: every record lands, and the worker's
memory follows the chunk size, not the size of the document."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import orjson
import psycopg
import pytest

from app.core.run_status import RunStatus
from scripts.bench.stack import MemorySampler
from tests.conftest import WorkerProcess
from tests.support.pipeline import ingest, records, rejects, source

DOCUMENT_BYTES = 100 * 1000 * 1000
# A pool process with its imports and connection is about a hundred MiB (docs/benchmarks.md).
# Reading record by record adds a window of the text and the rows of the chunks in flight,
# a few MiB; parsing the document whole adds its bytes and its objects, more than twice
# the document's size. The bound sits between the two, well clear of both.
PEAK_BOUND_MIB = 200


def write_document(path: Path, size: int) -> int:
    """A `{"meta": ..., "data": [records...], "links": ...}` document of about `size` bytes."""
    count = 0
    with path.open("wb") as out:
        out.write(b'{"meta": {"generator": "test", "note": "records at data"}, "data": [')
        written = 0
        while written < size:
            record = orjson.dumps({
                "id": count,
                "title": f"record {count}",
                "body": f"{count:08d} " + "lorem ipsum dolor sit amet " * 90,
                "score": count / 7,
                "big": 2**62 + count,
                "author": {"id": count % 977, "name": f"author {count % 977}"},
                "tags": ["a", "b", str(count % 13)],
            })
            if count:
                out.write(b",\n")
            out.write(record)
            written += len(record) + 2
            count += 1
        out.write(b'], "links": {"self": "big.json"}}')
    return count


@pytest.mark.timeout(900)
def test_a_100_mb_document_streams_through_a_worker_of_bounded_memory(
    db: psycopg.Connection, tmp_path: Path, session_worker_stopped: Callable[[], AbstractContextManager[None]]
) -> None:
    path = tmp_path / "big.json"
    count = write_document(path, DOCUMENT_BYTES)
    config = source(
        "bigdoc", "http_json", str(path), records_path="data", chunk_size=1000, max_response_bytes=200 * 1024 * 1024
    )
    with session_worker_stopped():
        # A worker of its own: the peak measured is this load's, not an earlier test's.
        worker = WorkerProcess("bigdoc", extra_env={"TASK_TIMEOUT_S": "900"}).start()
        try:
            assert worker.proc is not None
            with MemorySampler(worker.proc.pid) as memory:
                run = ingest(db, config, timeout_s=800)
        finally:
            worker.stop()

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert (run["fetched"], run["inserted"]) == (count, count)
    stored = db.execute("SELECT count(*), min(external_id::bigint), max(external_id::bigint) FROM records").fetchone()
    assert stored == (count, 0, count - 1)
    last = db.execute("SELECT data FROM records WHERE external_id = %s", (str(count - 1),)).fetchone()
    assert last is not None and last[0]["big"] == 2**62 + count - 1 and last[0]["author"]["id"] == (count - 1) % 977
    assert memory.max_mib < PEAK_BOUND_MIB, f"worker peaks (KiB): {memory.peaks_kib}"


@pytest.mark.usefixtures("worker")
def test_hostile_values_reject_one_record_and_the_rest_load(db: psycopg.Connection, tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "hostile.json"
    path.write_text(
        '{"data": [{"id": 1, "big": 9223372036854775807}, '
        f'{{"id": 2, "nested": {deep}}}, {{"id": 3, "n": {"7" * 5000}}}, {{"id": 4, "ok": true}}]}}'
    )
    run = ingest(db, source("hostile", "http_json", str(path), records_path="data"))

    assert run["status"] == RunStatus.PARTIAL
    assert sorted(records(db, "hostile")) == ["1", "4"]
    assert records(db, "hostile")["1"]["data"]["big"] == 9223372036854775807
    found = [(r["line_no"], r["reason"], r["message"], r["raw"][:20]) for r in rejects(db, run["id"])]
    assert found == [
        (2, "parse_error", "nested too deeply", '{"id": 2, "nested": '),
        (3, "parse_error", "number too large", '{"id": 3, "n": 77777'),
    ]
