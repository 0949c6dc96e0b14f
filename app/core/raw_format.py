"""The stored form of raw items, shared by the fetch stage (workers) and webhook intake (API).

A raw chunk's payload is the orjson encoding of a list of `[line, record, error, raw_text]`:
`record` is the parsed upstream object (or None when `error` says why it could not be
parsed, with the unparsable text in `raw_text`); `line` is its line or position upstream.
The fetch stage appends a fifth element, the row's raw digest in hex, when it has one
(workers/pipeline/fetch/raw_digest.py); rows written here have none.

Rows of a tabular source (CSV) are stored as `[line, values, None, None, digest]`, with
`values` a list in the order of the chunk's columns, which are stored once, in
raw_chunks.columns: a chunk whose `columns` is NULL holds whole records only.

Any valid JSON is stored as it was read (app/core/exact_json.py): a chunk that orjson
cannot encode (an integer beyond 64 bits, nesting deeper than orjson's limit, a number no
double holds) is written by the standard library's encoder instead, and read back by its
decoder. Only a record nested deeper than MAX_RAW_DEPTH levels, which could not be read
back safely, is stored as a parse error that says so.

A row that is a later copy of an id an earlier chunk of its run holds carries a sixth
element, REPEAT (its digest, the fifth, may then be None): the upsert records its
position even when its content is unchanged (workers/pipeline/fetch/repeats.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.core import exact_json

RawRow = list[Any]
REPEAT = 1  # the sixth element of a row that repeats an id of an earlier chunk of its run

# Deeper records are stored as parse errors: the standard library's decoder recurses once
# per level, and the rows must decode well within Python's recursion limit (1000).
MAX_RAW_DEPTH = 500


def raw_row(record: Any, line: int | None, error: str | None = None, raw_text: str | None = None) -> RawRow:
    return [line, record, error, raw_text]


def encode_rows(rows: list[RawRow]) -> bytes:
    try:
        return orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return exact_json.exact_dumps([_storable(row) for row in rows])


def _storable(row: RawRow) -> RawRow:
    """The row, or a parse error in its place when its record nests too deeply to store."""
    if row[1] is None or not exact_json.nesting_exceeds(row[1], MAX_RAW_DEPTH):
        return row
    return [row[0], None, f"nested deeper than {MAX_RAW_DEPTH} levels: not stored", None, *row[4:]]


def decode_rows(payload: bytes) -> list[RawRow]:
    return exact_json.loads_payload(payload)  # type: ignore[no-any-return]


# The one statement that stores a raw chunk: the fetch stage, webhook intake and the push
# window's re-cut all write through it. A chunk already stored is kept as it was (a
# re-driven fetch cuts the same chunks again); RETURNING says whether this call stored it.
INSERT_RAW_CHUNK = (
    "INSERT INTO raw_chunks (run_id, chunk_no, item_count, payload, skipped, columns)"
    " VALUES (%(run_id)s, %(chunk_no)s, %(item_count)s, %(payload)s, %(skipped)s, %(columns)s::jsonb)"
    " ON CONFLICT (run_id, chunk_no) DO NOTHING RETURNING chunk_no"
)


def raw_chunk_params(
    *, run_id: int, chunk_no: int, rows: list[RawRow], skipped: int = 0, columns: list[str] | None = None
) -> dict[str, Any]:
    """The parameters of INSERT_RAW_CHUNK: `rows` encoded, `columns` the header of tabular rows."""
    return {
        "run_id": run_id,
        "chunk_no": chunk_no,
        "item_count": len(rows),
        "payload": encode_rows(rows),
        "skipped": skipped,
        "columns": None if columns is None else orjson.dumps(columns).decode(),
    }
