"""Hostile but valid records, as upstream JSON text: shared by the pulled and the pushed tests.

Every record here is valid JSON (or JSON as Python reads it: NaN), and each one used to
fail more than itself: its chunk, its run, or the webhook delivery carrying it.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

import psycopg

BIG = 2**64


def huge_text(seed: int = 1, words: int = 130_000) -> str:
    """Distinct random words, about 1.4 MB: their tsvector would be larger than PostgreSQL's 1 MB."""
    rnd = random.Random(seed)
    return " ".join("".join(rnd.choices(string.ascii_lowercase, k=10)) for _ in range(words))


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def hostile_records_json(prefix: str = "") -> str:
    """A JSON array of good and hostile records (ids as strings get `prefix`)."""
    records: list[dict[str, Any]] = [
        {"id": f"{prefix}good-1", "title": "plain"},
        {"id": f"{prefix}deep", "tree": nested(300)},  # stored raw; deeper than any record is stored
        {"id": f"{prefix}deep-ok", "tree": nested(100)},
        {"id": f"{prefix}big-value", "n": 3 * BIG, "m": -3 * BIG},
        {"id": BIG, "title": "first huge id"},
        {"id": BIG + 1, "title": "second huge id"},
        {"id": f"{prefix}overflow", "value": "__1e400__"},
        {"id": f"{prefix}nan", "value": {"inner": ["__NaN__"]}},
        {"id": f"{prefix}good-2", "title": "plain too"},
    ]
    return json.dumps(records).replace('"__1e400__"', "1e400").replace('"__NaN__"', "NaN")


# external_id -> what the records table holds after ingesting hostile_records_json
STORED = {"good-1", "deep-ok", "big-value", str(BIG), str(BIG + 1), "good-2"}
# external_id -> (reason, field) of the rejections
REJECTED = {"deep": ("too_deep", "tree"), "overflow": ("non_finite_number", "value"),
            "nan": ("non_finite_number", "value.inner.0")}


def check_hostile_outcome(db: psycopg.Connection, source: str, run_id: int, prefix: str = "") -> None:
    """The good and the exact records are stored, the others rejected with reason and field."""
    stored = {
        key: (title, data)
        for key, title, data in db.execute(
            "SELECT external_id, title, data::text FROM records WHERE source = %s", (source,)
        )
    }
    expected = {key if key.isdigit() else prefix + key for key in STORED}
    assert set(stored) == expected
    assert stored[str(BIG)][0] == "first huge id" and stored[str(BIG + 1)][0] == "second huge id"
    big = db.execute(
        "SELECT data->>'n', data->>'m' FROM records WHERE source = %s AND external_id = %s",
        (source, prefix + "big-value"),
    ).fetchone()
    assert big == (str(3 * BIG), str(-3 * BIG))  # exact, never through a float
    depth = db.execute(
        "SELECT jsonb_path_query_first(data, ('$.tree' || repeat('.child', 99) || '.leaf')::jsonpath)"
        " FROM records WHERE source = %s AND external_id = %s",
        (source, prefix + "deep-ok"),
    ).fetchone()
    assert depth == (True,)
    rejected = {
        external_id: (reason, field, raw)
        for external_id, reason, field, raw in db.execute(
            "SELECT external_id, reason, field, raw FROM rejected_records WHERE run_id = %s", (run_id,)
        )
    }
    assert {key: value[:2] for key, value in rejected.items()} == {
        prefix + key: value for key, value in REJECTED.items()
    }
    assert rejected[prefix + "overflow"][2]["value"] == "Infinity"  # jsonb has no spelling for it
    assert rejected[prefix + "nan"][2]["value"] == {"inner": ["NaN"]}
    deep_raw = rejected[prefix + "deep"][2]  # too deep for jsonb in the API: kept as its JSON text
    assert isinstance(deep_raw, str) and json.loads(deep_raw)["tree"] == nested(300)
