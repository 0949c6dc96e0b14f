"""A chunk whose write fails for some records: those are rejected with the database's
message, the rest commit, on either write path (plain COPY of new records, staged upsert)."""

from __future__ import annotations

import psycopg

from tests.workers.pipeline.test_upsert_paths import SOURCE, new_run, people, stored
from workers.pipeline.normalize.normalizer import Normalizer
from workers.pipeline.upsert import write_chunk
from workers.sources.base import RawItem


def write_with_faults(db: psycopg.Connection, rows: list[dict[str, str]], faults: dict[int, str]):
    """Write `rows` as one chunk after spoiling the records at these positions: "jsonb" gives
    data PostgreSQL refuses, "encoding" a title no UTF-8 can encode."""
    chunk = Normalizer(SOURCE).normalize_chunk([RawItem(row, line=n) for n, row in enumerate(rows, start=2)])
    for position, fault in faults.items():
        if fault == "jsonb":
            chunk.records[position].data_json = '{"name": "\\ud800"}'  # a lone surrogate escape
        else:
            chunk.records[position].title = "\ud800"
    with psycopg.connect(db.info.dsn) as conn:
        counts = write_chunk(conn, run_id=new_run(db), chunk_no=0, source="people", fetched=len(rows), chunk=chunk)
    assert counts is not None
    assert counts.fetched == counts.inserted + counts.updated + counts.unchanged + counts.rejected
    return counts


def test_refused_records_of_new_records_are_rejected_alone(db: psycopg.Connection) -> None:
    counts = write_with_faults(db, people(100), {3: "jsonb", 71: "encoding"})
    assert (counts.inserted, counts.rejected) == (98, 2)
    assert set(stored(db)) == {f"{i:05d}" for i in range(100)} - {"00003", "00071"}
    rejected = db.execute(
        "SELECT external_id, reason, line_no, message, raw FROM rejected_records ORDER BY 1"
    ).fetchall()
    assert [row[:3] for row in rejected] == [("00003", "unstorable", 5), ("00071", "unstorable", 73)]
    assert "invalid input syntax for type json" in rejected[0][3] and "surrogate" in rejected[0][3]
    assert "surrogates not allowed" in rejected[1][3]
    assert rejected[0][4] == {"id": "00003", "name": "p3", "age": "3"}  # the raw payload, as read


def test_refused_records_of_an_update_are_rejected_alone_and_keep_their_stored_version(
    db: psycopg.Connection,
) -> None:
    write_with_faults(db, people(50), {})
    counts = write_with_faults(db, people(50, name="q"), {10: "jsonb"})
    assert (counts.inserted, counts.updated, counts.rejected) == (0, 49, 1)
    assert stored(db)["00010"] == ("p10", 10) and stored(db)["00011"] == ("q11", 11)
