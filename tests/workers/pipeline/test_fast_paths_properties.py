"""Property tests: each fast path gives exactly what its general path gives.

- The normaliser's compiled fast path (Normalizer._compile_fast_path), for dict records
  and for CSV rows given as values (TabularRow), against its general path
  (normalize_item, all the normaliser runs when there is no fast path).
- The nullable coercers (the per-record loop's) against is_empty and the plain coercer.
- The fetch stage's row keys (RowDigester.key and .tabular) against the external id the
  normaliser gives the same row after it went through a raw chunk, as the records table
  stores it (app.core.text.stored_key): a key that differs means rows stored unchanged
  are silently never recognised again.
- The normaliser's de-duplication against the upsert's key: one record per stored key.

Records are generated with mixed types: ints (up to 64 bits and beyond), floats (NaN and
infinities too), bools, None, strings with blanks, every kind of whitespace, NUL, U+FFFD
and digits of other scripts, nested dicts and lists, ids at dotted paths.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from app.core.raw_format import encode_rows
from app.core.sources_config import UNIFIED_FIELDS, SourceConfig
from app.core.text import stored_key
from workers.pipeline.fetch.raw_digest import RowDigester
from workers.pipeline.normalize.coerce import COERCERS, NULLABLE_COERCERS, nullable
from workers.pipeline.normalize.normalizer import MISSING_ID, NormalizedChunk, Normalizer
from workers.pipeline.raw import decode_items, encode_item
from workers.sources.base import RawItem, RowBatch, TabularRow, dotted_get

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what is generated ---------------------------------------------------------------------

_CHARS = list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\x00\ufffd" "abzAZ019.-_:+T é٣²")
_TEXTS = [
    "", " ", "\t\n", "\u3000", "\x00", " \x00", "\ufffd", "a\x00b", "a\ufffdb", "1", "007", "-3", "+4", " 5 ",
    "1.5", "2.0", "1e3", "1_000", "nan", "inf", "-0", "true", "yes", "No", " TRUE ", "t", "٣", "²", "2024-01-02",
    "2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123456+02:00", "2024-13-45", "Tue, 10 Jun 2003 04:00:00 GMT",
    "yesterday", "a.b", "[1]", "{}",
]
texts = st.one_of(st.sampled_from(_TEXTS), st.text(st.sampled_from(_CHARS), max_size=6), st.text(max_size=4))
ints_64 = st.one_of(st.integers(-1000, 1000), st.integers(-(2**63), 2**64 - 1))
ints = st.one_of(ints_64, st.integers(2**64, 2**70), st.integers(-(2**70), -(2**63) - 1))
floats = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 1.5, 1e16, 1e300]), st.floats())
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
keys = st.one_of(st.sampled_from(["id", "a", "b", "0", "x", "a.b", ""]), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
identities = st.one_of(
    texts, ints, floats, st.booleans(), st.none(),
    st.lists(scalars, max_size=2), st.dictionaries(keys, scalars, max_size=2),
)
dates = st.one_of(texts, st.integers(-(10**12), 10**12), st.floats(), st.none())


def records(id_values: st.SearchStrategy[Any] = identities, values: st.SearchStrategy[Any] = json_values) -> Any:
    """Dict records with ids where the generated configurations look for them (top level,
    "a.b", "meta.id", "items.0.id") and values where they map or coerce fields."""
    nested = {
        "a": st.one_of(st.fixed_dictionaries({}, optional={"b": id_values, "c": values}), values),
        "meta": st.one_of(st.fixed_dictionaries({}, optional={"id": id_values, "seq": values}), values),
        "items": st.one_of(st.lists(st.fixed_dictionaries({}, optional={"id": id_values}), max_size=2), values),
    }
    flat = {
        name: id_values if name in ("id", "Id") else dates if name in ("when", "published") else values
        for name in ("id", "Id", "n", "x", "when", "title", "name", "link", "published", "a.b")
    }
    known = st.fixed_dictionaries({}, optional={**flat, **nested})
    return st.tuples(known, st.dictionaries(keys, values, max_size=2)).map(lambda parts: {**parts[0], **parts[1]})


_FLAT_NAMES = ["id", "Id", "n", "x", "when", "title", "name", "link", "published"]
_DOTTED_NAMES = ["a.b", "meta.id", "items.0.id", "meta.seq"]


@st.composite
def sources(draw: st.DrawFn) -> SourceConfig:
    """Source configurations, mostly of the kind the fast path is compiled for (every path
    a top-level key), sometimes with a dotted id, type or mapping (no fast path)."""
    names = st.sampled_from(_FLAT_NAMES) if draw(st.integers(0, 3)) else st.sampled_from(_FLAT_NAMES + _DOTTED_NAMES)
    kind = draw(st.sampled_from(["csv", "http_json", "webhook", "rss"]))
    id_field = draw(st.sampled_from(["id", "Id", "n", "title", "a.b", "meta.id", "items.0.id"]))
    types = draw(st.dictionaries(names, st.sampled_from(sorted(COERCERS)), max_size=3))
    fields = draw(st.dictionaries(st.sampled_from(sorted(UNIFIED_FIELDS)), names, max_size=3))
    incremental = draw(st.sampled_from([None, None, None, "n", "when"]))
    if incremental and types.get(incremental) == "bool":  # not a valid configuration
        del types[incremental]
    return SourceConfig(
        name="props", kind=kind, url=None if kind == "webhook" else "/tmp/props",
        id_field=None if kind == "rss" and draw(st.booleans()) else id_field,
        types=types, fields=fields, incremental_field=incremental,
        secret_env="PROPS_SECRET" if kind == "webhook" else None,
    )


_COLUMNS = ["id", "Id", "n", "x", "when", "title", "name", "link", "published", "a", "a.b", "meta", "meta.id"]


@st.composite
def sources_and_tables(draw: st.DrawFn) -> tuple[SourceConfig, list[str], list[list[str]]]:
    """A source, and a CSV file's header (distinct names, as the connector requires; mostly
    with a column named as the source's id_field, dotted or not) and rows (strings)."""
    source = draw(sources())
    id_field = source.id_field or "id"
    columns = draw(st.lists(st.one_of(st.sampled_from(_COLUMNS), texts), min_size=1, max_size=6, unique=True))
    if id_field not in columns and draw(st.integers(0, 3)):
        at = draw(st.integers(0, len(columns)))
        columns = [*columns[:at], id_field, *columns[at:]]
    row = st.lists(texts, min_size=len(columns), max_size=len(columns))
    return source, columns, draw(st.lists(row, min_size=1, max_size=6))


# --- how results are compared ----------------------------------------------------------------


def _general(source: SourceConfig) -> Normalizer:
    """The normaliser without its fast path: normalize_item decides every record."""
    normalizer = Normalizer(source)
    normalizer._fast = None
    return normalizer


def _summary(chunk: NormalizedChunk) -> tuple[Any, ...]:
    # repr: NaN equals itself, and 1, 1.0 and True stay apart.
    return (
        [(r.external_id, r.title, r.content, r.author, r.url, r.published_at, repr(r.data), r.content_hash,
          r.data_json, r.raw_digest) for r in chunk.records],
        [(j.reason, j.message, j.field, j.line_no, j.external_id, repr(j.raw)) for j in chunk.rejections],
        chunk.superseded, repr(chunk.max_incremental), chunk.observed,
    )


def _outcome(normalizer: Normalizer, items: list[RawItem]) -> tuple[Any, ...]:
    try:
        return ("normalised", _summary(normalizer.normalize_chunk(items)))
    except Exception as exc:  # e.g. an int beyond 64 bits: orjson cannot hash it, on either path
        return ("raised", type(exc).__name__, str(exc))


def _call(function: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    try:
        result = function(value)
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    return ("returned", type(result).__name__, repr(result))


# --- the normaliser: fast path == general path -----------------------------------------------


@PROPERTY
@given(source=sources(), rows=st.lists(records(), min_size=1, max_size=5))
def test_the_fast_path_normalises_dict_records_as_the_general_path(source: SourceConfig, rows: list[Any]) -> None:
    fast, general = Normalizer(source), _general(source)
    event("fast path compiled" if fast._fast is not None else "no fast path for this configuration")

    def items() -> list[RawItem]:  # fresh copies: neither path may change what it was given
        return [RawItem(copy.deepcopy(row), line=n) for n, row in enumerate(rows, 1)]

    given_items = items()
    assert _outcome(fast, given_items) == _outcome(general, items())
    assert repr([item.record for item in given_items]) == repr(rows)  # the raw stays as it came


@PROPERTY
@given(case=sources_and_tables())
@example(case=(
    SourceConfig(name="props", kind="csv", url="/tmp/props", id_field="n", types={"n": "int", "x": "float"}),
    ["n", "x", "title"], [["1", " ", "a\x00"], ["", "2", "b"], ["2", "nan", "c"], ["1", "3", "d"]],
))
def test_the_fast_path_normalises_csv_rows_as_the_general_path(
    case: tuple[SourceConfig, list[str], list[list[str]]]
) -> None:
    """The same logical row as a TabularRow (values + columns) or as a dict record, on
    either path: one result."""
    source, columns, rows = case
    fast, general = Normalizer(source), _general(source)

    def as_values() -> list[RawItem]:
        return [TabularRow(list(row), n, columns) for n, row in enumerate(rows, 2)]

    def as_records() -> list[RawItem]:
        return [RawItem(dict(zip(columns, row, strict=True)), n) for n, row in enumerate(rows, 2)]

    expected = _outcome(general, as_records())
    assert _outcome(fast, as_values()) == expected
    assert _outcome(fast, as_records()) == expected
    assert _outcome(general, as_values()) == expected


def test_the_fast_path_is_taken_for_a_flat_configuration() -> None:
    """The properties above compare something: for a configuration of top-level paths the
    compiled path answers (None would hand every record to the general path)."""
    source = SourceConfig(name="props", kind="csv", url="/tmp/props", id_field="id", types={"n": "int"})
    compiled = Normalizer(source)._fast
    assert compiled is not None
    record = compiled({"id": "7", "n": "3", "title": "T"}, True)
    assert record is not None and (record.external_id, record.data["n"], record.title) == ("7", 3, "T")


@PROPERTY
@given(kind=st.sampled_from(sorted(COERCERS)), value=st.one_of(scalars, st.lists(scalars, max_size=1)))
def test_the_nullable_coercers_are_is_empty_then_the_coercer(kind: str, value: Any) -> None:
    assert _call(NULLABLE_COERCERS[kind], value) == _call(nullable(COERCERS[kind]), value)


# --- the fetch stage's row keys == the ids the upsert stores ----------------------------------


def _through_raw_chunk(items: list[RawItem], columns: list[str] | None = None) -> list[RawItem]:
    """What the normalize stage reads back of items the fetch stage stored (workers/pipeline/raw.py)."""
    payload = encode_rows([encode_item(item, columns) for item in items])
    return decode_items(payload, None if columns is None else list(columns))


def _assert_key_matches(key: str | None, identity: Any, chunk: NormalizedChunk, where: str) -> None:
    """`key` (the digester's, for one item) against what the normaliser made of that item."""
    if chunk.records:
        [record] = chunk.records
        if key is not None:
            assert key == stored_key(record.external_id), where
        else:  # no key: only for ids the digester leaves to the normaliser (never a str or int)
            assert type(identity) not in (str, int), f"{where}: usable id {identity!r} got no key"
        return
    [rejection] = chunk.rejections
    if rejection.reason == MISSING_ID:
        assert key is None, f"{where}: key {key!r} for a record rejected without a usable id"
    elif key is not None:
        assert rejection.external_id is not None and key == stored_key(rejection.external_id), where


@PROPERTY
@given(source=sources(), rows=st.lists(records(values=st.one_of(scalars, json_values)), min_size=1, max_size=5))
@example(source=SourceConfig(name="props", kind="http_json", url="/tmp/props", id_field="a.b"),
         rows=[{"a": {"b": "x\x00y"}}, {"a": {"b": 7}}, {"a": {"b": " \x00"}}, {"a": {"b": True}}, {"a": {"b": 1.5}}])
def test_the_digester_key_is_the_external_id_as_stored_for_records(source: SourceConfig, rows: list[Any]) -> None:
    digester, normalizer = RowDigester(source), Normalizer(source)
    id_field = source.id_field or "id"
    for n, row in enumerate(rows, 1):
        item = RawItem(copy.deepcopy(row), line=n)
        key = digester.key(item)
        item.digest = digester.digest(item)
        try:
            stored = _through_raw_chunk([item])
        except TypeError:  # an int beyond 64 bits: the fetch stage cannot store the row at all
            continue
        chunk = normalizer.normalize_chunk(stored)
        _assert_key_matches(key, dotted_get(row, id_field), chunk, f"id_field {source.id_field!r}, row {row!r}")


@PROPERTY
@given(case=sources_and_tables())
@example(case=(
    SourceConfig(name="props", kind="csv", url="/tmp/props", id_field="id"),
    ["id", "x"], [["a\x00", "1"], ["", "2"], [" ", "3"], ["\x00", "4"], ["7", "5"]],
))
# Found by this property: a dotted id_field is a path (the normaliser rejects every row of a
# CSV, whose values are strings, with missing_id), but the digester took it for a column's
# name and gave these rows the column's value as a key.
@example(case=(SourceConfig(name="props", kind="csv", url="/tmp/props", id_field="a.b"), ["a.b"], [["x"]]))
def test_the_digester_key_is_the_external_id_as_stored_for_csv_rows(
    case: tuple[SourceConfig, list[str], list[list[str]]]
) -> None:
    source, columns, rows = case
    digester, normalizer = RowDigester(source), Normalizer(source)
    lines = list(range(2, len(rows) + 2))
    batch_keys, batch_digests = digester.tabular(RowBatch(columns, [list(row) for row in rows], lines))
    for n, (row, line) in enumerate(zip(rows, lines, strict=True)):
        item = TabularRow(list(row), line, columns)
        key = digester.key(item)
        item.digest = digester.digest(item)
        # The batch form (unchanged.py) gives each row what key() and digest() give.
        assert (batch_keys[n], batch_digests[n]) == (key, item.digest)
        chunk = normalizer.normalize_chunk(_through_raw_chunk([item], columns))
        record = dict(zip(columns, row, strict=True))
        where = f"id_field {source.id_field!r}, row {record!r}"
        _assert_key_matches(key, dotted_get(record, source.id_field or "id"), chunk, where)


# Ids from a tiny alphabet, so that ids differing only by NUL against U+FFFD meet often.
_CLASHING_IDS = st.one_of(st.text(st.sampled_from("\x00\ufffda"), min_size=1, max_size=2), st.integers(0, 3))


@PROPERTY
@given(source=sources(), rows=st.lists(records(_CLASHING_IDS, st.one_of(st.none(), ints_64, texts)), max_size=8))
@example(source=SourceConfig(name="props", kind="http_json", url="/tmp/props", id_field="id"),
         rows=[{"id": "\x00"}, {"id": "\ufffd"}])
def test_a_chunk_holds_each_stored_key_once(source: SourceConfig, rows: list[Any]) -> None:
    """The upsert writes a chunk's records in one statement keyed by the stored id: two
    records of one chunk with one stored key fail it (ON CONFLICT DO UPDATE cannot affect
    a row twice), on every delivery. The later copy supersedes the earlier, as for equal ids."""
    chunk = Normalizer(source).normalize_chunk([RawItem(copy.deepcopy(row), line=n) for n, row in enumerate(rows, 1)])
    keys = [stored_key(record.external_id) for record in chunk.records]
    assert len(keys) == len(set(keys)), keys
    assert keys == sorted(keys)  # in the order of the records table's "C" collation
    assert len(chunk.records) + chunk.superseded + len(chunk.rejections) == len(rows)


@pytest.mark.parametrize("external_id", ["", "a", "\x00", "a\x00b\x00", "\ufffd", "é\u3000"])
def test_stored_key_replaces_nul_only(external_id: str) -> None:
    stored = stored_key(external_id)
    assert stored == external_id.replace("\x00", "\ufffd") and "\x00" not in stored
