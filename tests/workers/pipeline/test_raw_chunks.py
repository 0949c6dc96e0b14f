"""How the fetch stage keeps raw rows: CSV rows as values with the chunk's columns, the
rest as whole records (app/core/raw_format.py), and read back the same either way."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from app.core.raw_format import encode_rows
from app.core.run_status import RunStatus
from tests.support.pipeline import ingest, records, source
from workers.pipeline.raw import decode_items, encode_item, load_chunk, store_chunk
from workers.sources.base import RawItem, TabularRow


@pytest.mark.usefixtures("worker")
def test_csv_chunks_store_values_once_with_their_columns(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text('id,name,score\n1,"Ann, the first",10\n2,Bob\n3,Cy,30\n')  # line 3 lacks a field
    run = ingest(db, source("people", "csv", str(path), fields={"title": "name"}, types={"score": "int"}))

    assert (run["inserted"], run["rejected"]) == (2, 1)
    columns, payload = db.execute("SELECT columns, payload FROM raw_chunks WHERE run_id = %s", (run["id"],)).fetchone()
    assert columns == ["id", "name", "score"]
    rows = orjson.loads(payload)
    assert [row[:2] for row in rows] == [[2, ["1", "Ann, the first", "10"]], [3, None], [4, ["3", "Cy", "30"]]]
    assert rows[1][2].startswith("expected 3 fields") and rows[1][3] == "2,Bob"
    stored = records(db, "people")
    assert stored["1"]["title"] == "Ann, the first" and stored["3"]["data"] == {"id": "3", "name": "Cy", "score": 30}


def test_stored_chunks_read_back_as_the_items_they_were(db: psycopg.Connection) -> None:
    db.execute("INSERT INTO runs (source, trigger, status, config) VALUES ('s', 'api', %s, '{}')", (RunStatus.RUNNING,))
    run_id = db.execute("SELECT max(id) FROM runs").fetchone()[0]
    columns = ["id", "v"]
    items = [
        TabularRow(["1", "a"], 2, columns, b"\x01" * 16),
        RawItem(None, 3, "unparsable CSV row", "1,\"a"),
        RawItem({"id": "9", "v": "from a dict"}, 4),  # not one of the chunk's columns: kept whole
    ]
    store_chunk(db, run_id=run_id, chunk_no=0, items=[encode_item(i, columns) for i in items], columns=columns)

    loaded = load_chunk(db, run_id=run_id, chunk_no=0)
    assert loaded is not None
    assert [(i.line, i.record, i.error, i.digest) for i in loaded.items] == [
        (2, {"id": "1", "v": "a"}, None, b"\x01" * 16),
        (3, None, "unparsable CSV row", None),
        (4, {"id": "9", "v": "from a dict"}, None, None),
    ]
    assert loaded.items[1].raw_text == "1,\"a"


def test_a_list_record_without_columns_stays_a_list() -> None:
    # Webhook and JSON chunks have no columns: a list there is the upstream's own (bad) record.
    (item,) = decode_items(encode_rows([[1, ["not", "an", "object"], None, None]]))
    assert item.record == ["not", "an", "object"] and item.values is None
