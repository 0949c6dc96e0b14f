"""The normaliser on values orjson refuses: records nested to the limit and past it,
numbers no double holds, integers beyond 64 bits (stored exactly, hashed stably)."""

from __future__ import annotations

import json

from app.core.exact_json import MAX_DEPTH, NonFinite
from app.core.sources_config import SourceConfig
from tests.support.hostile import BIG, nested
from workers.pipeline.normalize.normalizer import Normalizer
from workers.sources.base import RawItem

SOURCE = SourceConfig(name="h", kind="http_json", url="http://x", id_field="id")


def normalize(*records: dict) -> tuple[dict, dict]:
    chunk = Normalizer(SOURCE).normalize_chunk([RawItem(rec, line=n) for n, rec in enumerate(records, start=1)])
    return ({rec.external_id: rec for rec in chunk.records},
            {rej.external_id: (rej.reason, rej.field) for rej in chunk.rejections})


def test_records_nested_to_the_limit_are_kept_and_deeper_ones_rejected() -> None:
    # the record itself is level 1: its field "t" holds MAX_DEPTH - 1 more levels
    kept, rejected = normalize({"id": "at", "t": nested(MAX_DEPTH - 1)}, {"id": "past", "t": nested(MAX_DEPTH)})
    assert set(kept) == {"at"} and rejected == {"past": ("too_deep", "t")}
    assert json.loads(kept["at"].data_json) == {"id": "at", "t": nested(MAX_DEPTH - 1)}


def test_non_finite_numbers_are_rejected_naming_the_field() -> None:
    kept, rejected = normalize({"id": "a", "x": {"y": [1, NonFinite("inf")]}}, {"id": "b", "x": 1.5})
    assert set(kept) == {"b"} and rejected == {"a": ("non_finite_number", "x.y.1")}


def test_big_integers_are_stored_exactly_and_hashed_the_same_every_time() -> None:
    first, _ = normalize({"id": BIG, "n": BIG + 1}, {"id": BIG + 1, "n": 1})
    again, _ = normalize({"id": BIG, "n": BIG + 1})
    assert set(first) == {str(BIG), str(BIG + 1)}
    assert json.loads(first[str(BIG)].data_json) == {"id": BIG, "n": BIG + 1}
    assert first[str(BIG)].content_hash == again[str(BIG)].content_hash
