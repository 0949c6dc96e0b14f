"""Unchanged rows are recognised by their raw digest at the fetch stage and left out.

Through the real worker: counts, what was stored as raw chunks, which records were
written (xmin moves only on a write), and the cases where rows must NOT be left out.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psycopg
import pytest

from app.core.sources_config import SourceConfig
from tests.support.http_server import LocalHTTPServer, Response
from tests.support.pipeline import ingest, records, source
from workers.pipeline.fetch.raw_digest import RowDigester, config_fingerprint
from workers.pipeline.fetch.unchanged import _PROBE_SETTINGS, _TO_KEEP, SEP, _likely_ids, filters
from workers.sources.base import RawItem, RowBatch, TabularRow

pytestmark = pytest.mark.usefixtures("worker")

HEADER = ["id", "name", "score"]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def csv_rows(n: int) -> list[list[str]]:
    return [[str(i), f"name {i}", str(i * 2)] for i in range(1, n + 1)]


def write_versions(db: psycopg.Connection, source_name: str) -> dict[str, int]:
    """external_id -> xmin: the transaction that last wrote each record."""
    rows = db.execute("SELECT external_id, xmin::text::bigint FROM records WHERE source = %s", (source_name,))
    return dict(rows.fetchall())


def raw_chunks_of(db: psycopg.Connection, run_id: int) -> tuple[int, int]:
    """(rows stored as raw chunks, rows counted as skipped) for a run."""
    row = db.execute(
        "SELECT coalesce(sum(item_count), 0), coalesce(sum(skipped), 0) FROM raw_chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_rerun_stores_and_writes_only_the_changed_rows(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    rows = csv_rows(60)
    write_csv(path, rows)
    config = source("people", "csv", str(path), chunk_size=10, types={"score": "int"}, fields={"title": "name"})
    first = ingest(db, config)
    assert first["inserted"] == 60
    before = write_versions(db, "people")

    for i in (4, 30, 59):  # three rows change, and one is added
        rows[i - 1][1] = f"renamed {i}"
    rows.append(["61", "name 61", "122"])
    write_csv(path, rows)
    second = ingest(db, config)

    assert (second["fetched"], second["inserted"], second["updated"], second["unchanged"]) == (61, 1, 3, 57)
    assert raw_chunks_of(db, second["id"]) == (4, 57)  # only the 4 rows that differ were stored
    stored = records(db, "people")
    assert stored["30"]["title"] == "renamed 30" and stored["61"]["data"]["score"] == 122
    after = write_versions(db, "people")
    rewritten = {key for key in before if after[key] != before[key]}
    assert rewritten == {"4", "30", "59"}  # the 57 unchanged records cost no write


def test_a_changed_mapping_renormalises_every_row(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    write_csv(path, csv_rows(20))
    ingest(db, source("people", "csv", str(path), fields={"title": "name"}))
    path.write_text(path.read_text() + "21,name 21,42\n")  # a new file hash, so the file is read

    remapped = ingest(db, source("people", "csv", str(path), fields={"title": "score"}))

    assert raw_chunks_of(db, remapped["id"]) == (21, 0)  # nothing recognised: the mapping changed
    assert (remapped["inserted"], remapped["updated"]) == (1, 20)
    assert records(db, "people")["7"]["title"] == "14"


def test_same_content_with_a_new_raw_form_refreshes_the_digest_without_an_update(
    db: psycopg.Connection,
) -> None:
    rows = [{"id": i, "name": f"n{i}", "score": i} for i in range(1, 11)]
    served = {"body": json.dumps(rows)}
    with LocalHTTPServer() as server:
        server.route("/things", lambda _r: Response(200, served["body"]))
        config = source("things", "http_json", f"{server.url}/things")
        ingest(db, config)
        # Same records, keys in another order: a different raw row, the same normalised record.
        served["body"] = json.dumps([{"score": r["score"], "name": r["name"], "id": r["id"]} for r in rows])
        reordered = ingest(db, config)
        third = ingest(db, config)

    assert (reordered["updated"], reordered["unchanged"]) == (0, 10)
    assert raw_chunks_of(db, reordered["id"]) == (10, 0)  # not recognised: each row went through
    assert (third["updated"], third["unchanged"]) == (0, 10)
    assert raw_chunks_of(db, third["id"]) == (0, 10)  # the refreshed digests are recognised


def test_an_id_repeated_in_a_batch_is_never_left_out(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "dupes.csv"
    rows = [*csv_rows(5), ["3", "second copy of 3", "99"]]
    write_csv(path, rows)
    config = source("dupes", "csv", str(path), fields={"title": "name"})
    ingest(db, config)
    assert records(db, "dupes")["3"]["title"] == "second copy of 3"

    write_csv(path, [*rows, ["6", "name 6", "12"]])
    again = ingest(db, config)

    assert raw_chunks_of(db, again["id"]) == (3, 4)  # both copies of 3, and the new row
    assert records(db, "dupes")["3"]["title"] == "second copy of 3"
    assert again["fetched"] == 7


def test_left_out_rows_are_no_evidence_of_removed_fields(db: psycopg.Connection) -> None:
    # Only some records carry "tag"; the ones that change this time do not.
    rows = [{"id": i, "name": f"n{i}", **({"tag": "x"} if i % 2 else {})} for i in range(1, 21)]
    served = {"body": json.dumps(rows)}
    with LocalHTTPServer() as server:
        server.route("/things", lambda _r: Response(200, served["body"]))
        config = source("tagged", "http_json", f"{server.url}/things")
        ingest(db, config)
        for row in rows:
            if row["id"] % 2 == 0:
                row["name"] += " (edited)"
                row["color"] = "red"
        served["body"] = json.dumps(rows)
        second = ingest(db, config)

    assert (second["updated"], second["unchanged"]) == (10, 10)
    events = db.execute("SELECT kind, field FROM drift_events WHERE source = 'tagged' ORDER BY id").fetchall()
    assert events == [("added", "color")]  # not ("removed", "tag"): the tagged rows were left out unchanged
    known = dict(db.execute("SELECT field, type FROM schema_fields WHERE source = 'tagged'").fetchall())
    assert known == {"id": "number", "name": "str", "tag": "str", "color": "str"}


def test_reject_sources_are_not_filtered(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "strict.csv"
    write_csv(path, csv_rows(10))
    config = source("strict", "csv", str(path), on_drift="reject")
    ingest(db, config)
    path.write_text(path.read_text() + "11,name 11,22\n")
    again = ingest(db, config)
    assert raw_chunks_of(db, again["id"]) == (11, 0)
    assert db.execute("SELECT count(*) FROM records WHERE raw_digest IS NOT NULL").fetchone()[0] == 0


def test_digester_keys_follow_the_normaliser_and_fingerprints_follow_the_mapping() -> None:
    digester = RowDigester(SourceConfig(name="s", kind="http_json", url="http://x", id_field="id"))
    assert digester.key(RawItem({"id": 7})) == "7"
    assert digester.key(RawItem({"id": "a\x00b"})) == "a\ufffdb"  # as stored
    assert [digester.key(RawItem({"id": v})) for v in ("", "  ", None, True, 1.5, [1])] == [None] * 6
    nested = RowDigester(SourceConfig(name="s", kind="http_json", url="http://x", id_field="meta.id"))
    assert nested.key(RawItem({"meta": {"id": "k"}})) == "k"
    assert digester.digest(RawItem({"id": 1, "a": 2})) != digester.digest(RawItem({"a": 2, "id": 1}))  # raw form
    other = RowDigester(SourceConfig(name="t", kind="http_json", url="http://y", id_field="id"))
    assert digester.digest(RawItem({"id": 1})) == other.digest(RawItem({"id": 1}))
    assert digester.digest(RawItem(None, 3, "unparsable")) is None

    def csv_source(**config: object) -> SourceConfig:
        return SourceConfig(name="s", kind="csv", url="/f.csv", **{"id_field": "id", **config})  # type: ignore[arg-type]

    def fingerprint(**config: object) -> bytes:
        return config_fingerprint(csv_source(**config))

    assert fingerprint() == fingerprint(schedule="every 5m", chunk_size=7)  # not about normalising
    assert filters(csv_source())
    assert not filters(csv_source(incremental_field="id"))
    assert not filters(csv_source(on_drift="reject"))
    assert len({fingerprint(), fingerprint(types={"a": "int"}), fingerprint(fields={"title": "a"}),
                fingerprint(id_field="a")}) == 4


def test_rows_given_as_values_are_digested_with_their_columns() -> None:
    digester = RowDigester(SourceConfig(name="s", kind="csv", url="/f.csv", id_field="id"))
    columns, renamed = ["id", "name"], ["id", "title"]
    as_values = TabularRow(["7", "Ann"], 2, columns)
    assert as_values.record == {"id": "7", "name": "Ann"}  # built when first asked for
    assert digester.key(as_values) == "7"
    assert digester.digest(as_values) == digester.digest(TabularRow(["7", "Ann"], 9, list(columns)))
    # A renamed column is a different row, and the dict form never collides with the values form.
    assert digester.digest(as_values) != digester.digest(TabularRow(["7", "Ann"], 2, renamed))
    assert digester.digest(as_values) != digester.digest(RawItem({"id": "7", "name": "Ann"}))
    assert digester.key(TabularRow(["Ann"], 2, ["name"])) is None  # no id column


def test_a_key_holding_the_separator_keeps_its_batch_whole(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    rows = [["1", "a", "1"], ["2\x1e3", "b", "2"], ["4", "c", "3"]]
    write_csv(path, rows)
    config = source("odd", "csv", str(path), fields={"title": "name"})
    ingest(db, config)

    rows[2][1] = "changed"
    write_csv(path, [*rows, ["5", "d", "4"]])
    again = ingest(db, config)

    # The keys travel joined by "\x1e": a key holding it would shift every later row onto
    # another row's digest. The batch is kept whole instead.
    assert raw_chunks_of(db, again["id"]) == (4, 0)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (1, 1, 2)
    assert records(db, "odd")["4"]["title"] == "changed"


def test_a_batch_of_rows_gets_the_keys_and_digests_of_its_rows_one_by_one() -> None:
    digester = RowDigester(SourceConfig(name="s", kind="csv", url="/f.csv", id_field="id"))
    columns = ["name", "id"]
    values = [["Ann", "7"], ["Bob", ""], ["Cy", "  "], ["Di", "8"], ["Ed", "7"], ["Fay", "a\x00b"]]
    keys, digests = digester.tabular(RowBatch(columns, values, list(range(2, 8))))
    one_by_one = [TabularRow(row, 1, columns) for row in values]
    assert keys == [digester.key(row) for row in one_by_one] == ["7", None, None, "8", "7", "a\ufffdb"]
    assert digests == [digester.digest(row) for row in one_by_one]
    assert digester.tabular(RowBatch(["name"], [["Ann"]], [2]))[0] == [None]  # no id column


def test_the_likely_id_range_covers_a_chunk_block_and_gives_up_when_too_wide() -> None:
    in_order = [101 + 625 * n for n in range(8)]  # a batch of 5,000 stored as ids 101..5100
    lo, hi = _likely_ids(in_order, margin=1250, count=5000)
    assert lo <= 101 and hi >= 5100 and hi - lo < 3 * 5000
    assert _likely_ids([1, 90_000], margin=1250, count=5000) == (1, 0)  # empty: probe every key


def test_the_id_range_decides_the_cost_of_a_comparison_never_its_answer(db: psycopg.Connection) -> None:
    """Rows whose records lie outside the range scanned are probed one by one: any range,
    even an empty or a wrong one, leaves the same rows to keep."""
    stored = {f"k{i:02}": bytes([i + 1]) * 16 for i in range(40)}
    for key, digest in stored.items():
        db.execute(
            "INSERT INTO records (source, external_id, data, content_hash, raw_digest, last_run_id)"
            " VALUES ('ranged', %s, '{}', %s, %s, %s)",
            (key, bytes(32), None if key == "k06" else digest, 99 if key == "k05" else 1),
        )
    db.execute(  # another source's record in the middle of the range, with a matching digest
        "INSERT INTO records (source, external_id, data, content_hash, raw_digest)"
        " VALUES ('other', 'k41', '{}', %s, %s)",
        (bytes(32), bytes(16)),
    )
    keys = [f"k{i:02}" for i in range(45)]  # k40..k44 are not stored for this source
    sent = [stored.get(key, bytes(16)) for key in keys]
    sent[3] = sent[20] = b"\xff" * 16  # changed rows
    # 1-based positions: the changed rows, the record written by this run (k05), the one
    # without a digest (k06), the rows not stored.
    expected = {4, 21, 6, 7, 41, 42, 43, 44, 45}
    ids = dict(db.execute("SELECT external_id, id FROM records WHERE source = 'ranged'").fetchall())
    first, last = min(ids.values()), max(ids.values())
    with psycopg.connect(db.info.dsn, autocommit=True) as probe:
        for setting in _PROBE_SETTINGS:
            probe.execute(setting)
        for lo, hi in [(1, 0), (first, last + 1), (first + 10, last - 10), (last + 100, last + 200), (0, last * 10)]:
            params = {"source": "ranged", "run_id": 99, "sep": SEP, "keys": SEP.join(keys),
                      "digests": b"".join(sent), "lo": lo, "hi": hi}
            assert {n for (n,) in probe.execute(_TO_KEEP, params)} == expected, (lo, hi)


def test_a_rerun_of_reordered_rows_still_leaves_out_exactly_the_unchanged(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    """Rows that moved since the first load are found outside the range their batch
    expects, by a probe each."""
    path = tmp_path / "moved.csv"
    rows = csv_rows(12_000)
    write_csv(path, rows)
    config = source("moved", "csv", str(path), chunk_size=2000)
    assert ingest(db, config)["inserted"] == 12_000

    moved = rows[9000:] + rows[3000:9000] + rows[:3000]  # first and last quarters swap places
    for row in moved[::100]:
        row[2] = "changed"
    write_csv(path, moved)
    again = ingest(db, config)

    assert (again["updated"], again["unchanged"], again["inserted"]) == (120, 11_880, 0)
    assert raw_chunks_of(db, again["id"]) == (120, 11_880)


def test_a_slowly_filling_chunk_is_stored_once_enough_rows_were_read_past_it(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    """A re-run that keeps a few rows stores them as they come (FLUSH_AFTER_CHUNKS_READ
    chunks' worth of rows read), not all at the end of the run."""
    path = tmp_path / "sparse.csv"
    rows = csv_rows(12_000)
    write_csv(path, rows)
    # The first load in big chunks (1,200 chunks of 10 took most of a task's time limit on a
    # busy machine); chunk_size is not part of a row's digest, so the re-run still knows them.
    ingest(db, source("sparse", "csv", str(path), chunk_size=1000))
    config = source("sparse", "csv", str(path), chunk_size=10)

    for i in (100, 6000, 11_000):  # one changed row in each batch of 5,000 the fetch reads
        rows[i][1] = "changed"
    write_csv(path, rows)
    again = ingest(db, config)

    assert (again["updated"], again["unchanged"]) == (3, 11_997)
    chunks = db.execute(
        "SELECT item_count FROM raw_chunks WHERE run_id = %s ORDER BY chunk_no", (again["id"],)
    ).fetchall()
    assert [count for (count,) in chunks] == [1, 1, 1]
