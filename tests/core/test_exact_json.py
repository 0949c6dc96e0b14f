"""app/core/exact_json.py and the raw chunk format: valid JSON is stored as it was read."""

from __future__ import annotations

import json

import orjson
import pytest

from app.core import exact_json
from app.core.exact_json import NonFinite
from app.core.raw_format import MAX_RAW_DEPTH, decode_rows, encode_rows, raw_row
from app.core.text import stored_json
from tests.support.hostile import BIG, nested


def test_integers_beyond_64_bits_stay_exact_and_distinct() -> None:
    body = json.dumps([{"id": BIG}, {"id": BIG + 1}, {"id": -BIG}]).encode()
    decoded = exact_json.loads(body)
    assert [item["id"] for item in decoded] == [BIG, BIG + 1, -BIG]
    assert decode_rows(encode_rows([raw_row(item, n) for n, item in enumerate(decoded)])) == [
        [n, item, None, None] for n, item in enumerate(decoded)
    ]


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"])
def test_numbers_no_double_holds_are_non_finite_never_null(literal: bytes) -> None:
    [value] = exact_json.loads(b"[" + literal + b"]")
    assert type(value) is NonFinite
    [row] = decode_rows(encode_rows([raw_row({"v": value}, 1)]))
    assert type(row[1]["v"]) is NonFinite and str(row[1]["v"]) == str(value)
    assert json.loads(stored_json({"v": value}))["v"] in ("Infinity", "-Infinity", "NaN")  # jsonb holds no NaN


def test_ordinary_documents_take_orjson_both_ways() -> None:
    body = b'[{"id": 1, "x": 1.5, "s": "\\u00e9"}]'
    assert exact_json.loads(body) == orjson.loads(body)
    rows = [raw_row(record, 1) for record in orjson.loads(body)]
    assert encode_rows(rows) == orjson.dumps(rows)  # no fallback, no mark


def test_deep_records_are_stored_raw_up_to_the_raw_limit_and_a_parse_error_beyond() -> None:
    rows = [raw_row(nested(300), 1), raw_row({"ok": 1}, 2), raw_row(nested(MAX_RAW_DEPTH + 1), 3)]
    decoded = decode_rows(encode_rows(rows))
    assert decoded[0] == rows[0] and decoded[1] == rows[1]
    assert decoded[2][:3] == [3, None, f"nested deeper than {MAX_RAW_DEPTH} levels: not stored"]
    assert exact_json.nesting_exceeds(nested(300), 299) and not exact_json.nesting_exceeds(nested(300), 300)


def test_stored_json_keeps_what_jsonb_can_hold() -> None:
    assert json.loads(stored_json({"n": BIG, "s": "a\x00b\ud800"})) == {"n": BIG, "s": "a\ufffdb\ufffd"}
    deep = stored_json(nested(300))
    assert isinstance(json.loads(deep), str) and json.loads(json.loads(deep)) == nested(300)
