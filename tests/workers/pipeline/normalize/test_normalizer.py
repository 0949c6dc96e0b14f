"""Normalisation: mapping, coercion, rejections with reasons, hashing, de-duplication."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
import pytest

from app.core.sources_config import SourceConfig
from workers.pipeline.normalize.normalizer import (
    COERCION_FAILED,
    INCREMENTAL_INVALID,
    MISSING_ID,
    PARSE_ERROR,
    Normalizer,
    content_of,
)
from workers.sources.base import RawItem, TabularRow


def csv_source(**extra: object) -> SourceConfig:
    return SourceConfig(
        name="passengers", kind="csv", url="/tmp/x.csv", id_field="PassengerId",
        types={"Age": "float", "Survived": "bool", "PassengerId": "int"}, fields={"title": "Name"}, **extra,
    )


def test_coerces_typed_fields_and_maps_unified_fields() -> None:
    chunk = Normalizer(csv_source()).normalize_chunk(
        [RawItem({"PassengerId": "7", "Age": "22.5", "Survived": "yes", "Name": "Kelly, Mr. James"}, line=2)]
    )
    assert not chunk.rejections
    [record] = chunk.records
    assert record.external_id == "7"
    assert record.data == {"PassengerId": 7, "Age": 22.5, "Survived": True, "Name": "Kelly, Mr. James"}
    assert record.title == "Kelly, Mr. James"
    assert record.content is None


def test_empty_strings_in_typed_fields_become_null() -> None:
    chunk = Normalizer(csv_source()).normalize_chunk([RawItem({"PassengerId": "1", "Age": "", "Survived": " "})])
    assert chunk.records[0].data["Age"] is None
    assert chunk.records[0].data["Survived"] is None


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        ({"Age": "3"}, MISSING_ID, "PassengerId"),
        ({"PassengerId": "", "Age": "3"}, MISSING_ID, "PassengerId"),
        ({"PassengerId": "2", "Age": "old"}, COERCION_FAILED, "Age"),
        ({"PassengerId": "2", "Survived": "maybe"}, COERCION_FAILED, "Survived"),
        ({"PassengerId": "2.5"}, COERCION_FAILED, "PassengerId"),
    ],
)
def test_bad_records_are_rejected_with_reason_field_and_raw(record: dict, reason: str, field: str) -> None:
    chunk = Normalizer(csv_source()).normalize_chunk([RawItem(dict(record), line=9)])
    assert not chunk.records
    [rejection] = chunk.rejections
    assert (rejection.reason, rejection.field, rejection.line_no) == (reason, field, 9)
    assert rejection.raw == record  # the raw payload is kept untouched, not the coerced copy


def test_unparsable_item_keeps_its_raw_text() -> None:
    unparsable = RawItem(None, line=4, error="3 fields, expected 4", raw_text="a,b,c")
    chunk = Normalizer(csv_source()).normalize_chunk([unparsable])
    [rejection] = chunk.rejections
    assert rejection.reason == PARSE_ERROR
    assert rejection.raw == "a,b,c"
    assert "expected 4" in rejection.message


def test_duplicate_ids_in_a_chunk_keep_the_last_and_sort_by_key() -> None:
    items = [RawItem({"PassengerId": str(n), "Name": f"v{n}"}) for n in (3, 1, 2)]
    items.append(RawItem({"PassengerId": "1", "Name": "newer"}))
    chunk = Normalizer(csv_source()).normalize_chunk(items)
    assert [r.external_id for r in chunk.records] == ["1", "2", "3"]
    assert chunk.records[0].title == "newer"
    assert chunk.superseded == 1


def test_hash_changes_with_content_and_only_with_content() -> None:
    normalizer = Normalizer(csv_source())
    a = normalizer.normalize_item(RawItem({"PassengerId": "1", "Name": "A", "Age": "3"}))
    same = normalizer.normalize_item(RawItem({"Age": "3.0", "Name": "A", "PassengerId": "1"}))
    changed = normalizer.normalize_item(RawItem({"PassengerId": "1", "Name": "B", "Age": "3"}))
    assert a.content_hash == same.content_hash
    assert a.content_hash != changed.content_hash


def test_rss_default_mapping_and_dates() -> None:
    source = SourceConfig(name="news", kind="rss", url="/tmp/feed.xml")
    record = Normalizer(source).normalize_item(
        RawItem({"id": "g1", "title": "T", "link": "https://x/1", "description": "D", "author": "me",
                 "published": "Tue, 10 Jun 2003 04:00:00 GMT"})
    )
    assert (record.title, record.url, record.content, record.author) == ("T", "https://x/1", "D", "me")
    assert record.published_at == datetime(2003, 6, 10, 4, tzinfo=UTC)


def test_bad_published_at_is_rejected() -> None:
    source = SourceConfig(name="news", kind="rss", url="/tmp/feed.xml")
    chunk = Normalizer(source).normalize_chunk([RawItem({"id": "g1", "published": "yesterday-ish"})])
    assert chunk.rejections[0].field == "published_at"


def test_dotted_paths_and_incremental_maximum() -> None:
    source = SourceConfig(
        name="api", kind="http_json", url="http://x", id_field="meta.id", incremental_field="meta.seq",
        fields={"title": "attributes.name", "author": "attributes.owner.id"}, types={"meta.seq": "int"},
    )
    chunk = Normalizer(source).normalize_chunk(
        [RawItem({"meta": {"id": i, "seq": str(i * 10)}, "attributes": {"name": f"n{i}", "owner": {"id": 5}}})
         for i in (1, 12, 3)]
    )
    assert chunk.max_incremental == 120
    assert chunk.records[0].title == "n1" and chunk.records[0].author == "5"


def test_an_incremental_value_with_no_place_in_the_order_is_a_rejection_not_the_maximum() -> None:
    source = SourceConfig(name="api", kind="http_json", url="http://x", id_field="id", incremental_field="seq")
    values = [3, "inf", "NaN", float("inf"), "later", "12", None, {"at": 1}]
    chunk = Normalizer(source).normalize_chunk([RawItem({"id": i, "seq": v}, line=i) for i, v in enumerate(values)])
    assert [(r.reason, r.field, r.line_no) for r in chunk.rejections] == [
        (INCREMENTAL_INVALID, "seq", line) for line in (1, 2, 3, 4, 7)
    ]
    assert {r.external_id for r in chunk.records} == {"0", "5", "6"}  # no value: kept, no position
    assert chunk.max_incremental == 12


def test_incremental_timestamps_give_the_latest_instant_in_utc() -> None:
    source = SourceConfig(name="api", kind="http_json", url="http://x", id_field="id", incremental_field="at",
                          types={"at": "datetime"})
    stamps = ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00+05:00", "2026-01-01T09:30:00-03:00"]
    chunk = Normalizer(source).normalize_chunk([RawItem({"id": i, "at": at}) for i, at in enumerate(stamps)])
    assert chunk.max_incremental == "2026-01-01T12:30:00Z"
    assert chunk.records[2].data["at"] == datetime.fromisoformat("2026-01-01T09:30:00-03:00")  # data keeps its offset


def test_csv_rows_given_as_values_normalise_like_records_and_the_general_path() -> None:
    columns = ["PassengerId", "Name", "Age", "Survived"]
    rows = [
        ["1", "Ann", "3", "1"],
        ["2", "Bob", "not a number", "0"],  # coercion fails: rejected with its raw values
        ["", "No id", "4", "1"],  # rejected: missing id
        ["3", "Cy", "", " "],  # empty typed values become null
        ["1", "Ann again", "5", "0"],  # a repeated id: the last wins
    ]
    normalizer = Normalizer(csv_source())
    as_values = normalizer.normalize_chunk([TabularRow(list(row), n, columns) for n, row in enumerate(rows, 2)])
    as_records = normalizer.normalize_chunk(
        [RawItem(dict(zip(columns, row, strict=True)), n) for n, row in enumerate(rows, 2)]
    )

    assert as_values.records == as_records.records
    assert [(r.line_no, r.reason, r.raw) for r in as_values.rejections] == [
        (3, COERCION_FAILED, {"PassengerId": "2", "Name": "Bob", "Age": "not a number", "Survived": "0"}),
        (4, MISSING_ID, {"PassengerId": "", "Name": "No id", "Age": "4", "Survived": "1"}),
    ]
    assert [(r.line_no, r.reason, r.raw) for r in as_records.rejections] == [
        (r.line_no, r.reason, r.raw) for r in as_values.rejections
    ]
    general = [normalizer.normalize_item(RawItem(dict(zip(columns, row, strict=True)))) for row in (rows[4], rows[3])]
    assert [(r.external_id, r.data, r.content_hash) for r in as_values.records] == [
        (g.external_id, g.data, g.content_hash) for g in general
    ]
    assert as_values.records[1].data == {"PassengerId": 3, "Name": "Cy", "Age": None, "Survived": None}


@pytest.mark.parametrize(
    "data",
    [
        {"b": 1, "a": [1, {"z": None, "y": 2.5}], "c": "x"},
        {1: "non-string key", "k": True, "when": datetime(2024, 5, 1, 12, 30, tzinfo=UTC)},
        {},
    ],
)
def test_content_hash_is_the_hash_of_the_canonical_record_and_the_data_text_its_data(data: dict) -> None:
    """content_of hashes the data's own encoding in place: the same bytes as encoding the
    whole record at once (the form every stored content_hash was made from)."""
    texts = {"title": "T", "content": None, "author": "A", "url": None}
    published_at = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    whole = orjson.dumps([texts, published_at, data], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    digest, data_json = content_of(texts, published_at, data)
    assert digest == hashlib.sha256(whole).digest()
    assert orjson.loads(data_json) == orjson.loads(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))
