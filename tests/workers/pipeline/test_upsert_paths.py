"""The write paths of one chunk: new records by plain INSERT, the fallback to the upsert when
some key exists after all, unchanged records dropped before staging, NUL scrubbing.

Whatever path a chunk takes, the counts and the stored rows must be those of the plain
upsert: these tests pin that down, since the paths exist only for speed.
"""

from __future__ import annotations

import psycopg
import pytest

from app.core.run_status import RunStatus
from app.core.sources_config import SourceConfig
from workers.pipeline.normalize.coerce import COERCERS, NULLABLE_COERCERS, CoercionError, is_empty
from workers.pipeline.normalize.normalizer import Normalizer
from workers.pipeline.upsert import write_chunk
from workers.sources.base import RawItem

SOURCE = SourceConfig(name="people", kind="csv", url="/tmp/people.csv", id_field="id", fields={"title": "name"},
                      types={"age": "int"})


def new_run(db: psycopg.Connection) -> int:
    db.execute("UPDATE runs SET status = %s WHERE source = 'people'", (RunStatus.SUCCEEDED,))
    row = db.execute(
        "INSERT INTO runs (source, trigger, status, config) VALUES ('people', 'api', %s, '{}') RETURNING id",
        (RunStatus.RUNNING,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def write(db: psycopg.Connection, rows: list[dict[str, str]], chunk_no: int = 0) -> tuple[int, int, int, int]:
    chunk = Normalizer(SOURCE).normalize_chunk([RawItem(row, line=n) for n, row in enumerate(rows, start=2)])
    with psycopg.connect(db.info.dsn) as conn:
        counts = write_chunk(conn, run_id=new_run(db), chunk_no=chunk_no, source="people", fetched=len(rows),
                             chunk=chunk)
    assert counts is not None
    assert counts.fetched == counts.inserted + counts.updated + counts.unchanged + counts.rejected
    return counts.inserted, counts.updated, counts.unchanged, counts.rejected


def people(n: int, name: str = "p") -> list[dict[str, str]]:
    return [{"id": f"{i:05d}", "name": f"{name}{i}", "age": str(i % 90)} for i in range(n)]


def stored(db: psycopg.Connection) -> dict[str, tuple[str, int]]:
    rows = db.execute("SELECT external_id, title, (data->>'age')::int FROM records WHERE source = 'people'")
    return {key: (title, age) for key, title, age in rows}


def test_new_records_are_inserted_then_recognised_unchanged_then_updated(db: psycopg.Connection) -> None:
    assert write(db, people(300)) == (300, 0, 0, 0)
    assert write(db, people(300)) == (0, 0, 300, 0)
    changed = people(300)
    changed[7]["name"] = "renamed"
    changed[250]["age"] = "1"
    assert write(db, changed) == (0, 2, 298, 0)
    assert stored(db)["00007"] == ("renamed", 7) and stored(db)["00250"] == ("p250", 1)
    assert db.execute("SELECT records FROM source_stats WHERE source = 'people'").fetchone()[0] == 300


def test_a_chunk_that_looks_new_but_holds_stored_keys_falls_back_to_the_upsert(db: psycopg.Connection) -> None:
    # Only a few evenly spaced keys are probed; one stored key between them is found by the
    # unique index instead, and the chunk is written by the upsert with the same counts.
    assert write(db, [people(300)[1]]) == (1, 0, 0, 0)
    rows = people(300)
    rows[1]["name"] = "changed meanwhile"
    assert write(db, rows) == (299, 1, 0, 0)
    assert len(stored(db)) == 300 and stored(db)["00001"] == ("changed meanwhile", 1)
    assert write(db, people(300)) == (0, 1, 299, 0)


def test_nul_characters_are_replaced_in_every_text_column(db: psycopg.Connection) -> None:
    assert write(db, [{"id": "a\x00b", "name": "x\x00y", "age": "3"}]) == (1, 0, 0, 0)
    row = db.execute("SELECT external_id, title, data->>'name' FROM records WHERE source = 'people'").fetchone()
    assert row == ("a\ufffdb", "x\ufffdy", "x\ufffdy")
    assert write(db, [{"id": "a\x00b", "name": "x\x00y", "age": "3"}]) == (0, 0, 1, 0)


def test_ids_stored_alike_in_one_chunk_are_one_record(db: psycopg.Connection) -> None:
    """"k\\x00" and "k\\ufffd" are both stored as "k\\ufffd": the later copy supersedes the
    earlier, as for equal ids (two rows of one key failed the chunk's upsert on every delivery)."""
    rows = [{"id": "k\x00", "name": "first", "age": "1"}, {"id": "k\ufffd", "name": "second", "age": "2"}]
    assert write(db, rows) == (1, 0, 1, 0)
    assert stored(db) == {"k\ufffd": ("second", 2)}
    assert write(db, rows[::-1]) == (0, 1, 1, 0)
    assert stored(db) == {"k\ufffd": ("first", 1)}


VALUES = ["", " ", "\t", "7", " 7 ", "007", "1_000", "-3", "+4", "1.0", "1.5", "1e3", "nan", "inf", "-inf", "abc",
          "true", "False", " yes ", "T", "n", "0", "1", "2", "٣", "²", None, True, False, 0, 1, 2, 2.0, 2.5,
          "2026-01-01", "2026-01-01T10:00:00Z", "Tue, 10 Jun 2003 04:00:00 GMT", [1], {"a": 1}]


@pytest.mark.parametrize("kind", sorted(COERCERS))
def test_nullable_coercers_equal_is_empty_then_coerce(kind: str) -> None:
    def reference(value: object) -> object:
        return None if is_empty(value) else COERCERS[kind](value)

    for value in VALUES:
        try:
            expected: object = ("ok", reference(value))
        except CoercionError as exc:
            expected = ("error", str(exc))
        try:
            got: object = ("ok", NULLABLE_COERCERS[kind](value))
        except CoercionError as exc:
            got = ("error", str(exc))
        assert got == expected, f"{kind} of {value!r}"
        if expected[0] == "ok":
            assert type(got[1]) is type(expected[1])  # type: ignore[index]
