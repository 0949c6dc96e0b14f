"""Isolation: what fails for one record fails that record, never its chunk.

Two layers. Before the COPY, `admissible` turns the records the database is known to
refuse into rejections: an external id past the unique index's limit. Then
`write_isolated` writes the rest; when that fails on a record's data (a value the
database refuses: its own message is the only exact check), the write is tried again by
halves, each in its own savepoint, down to the single records that fail. Those become
rejections carrying the database's message and the others commit with the chunk. A chunk
that writes cleanly pays one savepoint: the halving starts only after a failure.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from app.core.text import stored_key
from workers.pipeline.normalize.normalizer import UNSTORABLE, NormalizedRecord, Rejection

ID_TOO_LONG = "id_too_long"

# A btree entry holds at most 2704 bytes (a third of a page): the unique index on
# (source, external_id) refuses a longer key, unless it compresses below that, which no
# one can promise. 2048 bytes leaves room for the source name and the entry's header.
MAX_ID_BYTES = 2048

# SQLSTATE classes of failures a record's own values cause: 21 cardinality (one key twice
# in one statement), 22 data exception (a value the type refuses), 23 integrity
# constraint, 54 program limit exceeded (index row size, tsvector size). Anything else (a
# lost connection, a statement timeout, a deadlock) is no record's fault: it fails the
# chunk's attempt, which its task retries.
_RECORD_FAULT_CLASSES = ("21", "22", "23", "54")

Write = Callable[[list[NormalizedRecord], bool], tuple[int, int]]


def admissible(records: list[NormalizedRecord]) -> tuple[list[NormalizedRecord], list[Rejection]]:
    """The records the database can hold, and rejections for those it would refuse."""
    # An id of at most a quarter as many characters fits whatever they are: one length per record.
    if max(map(len, (rec.external_id for rec in records)), default=0) <= MAX_ID_BYTES // 4:
        return records, []
    kept: list[NormalizedRecord] = []
    rejections: list[Rejection] = []
    for rec in records:
        if len(stored_key(rec.external_id).encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            rejections.append(_rejection(rec, ID_TOO_LONG, f"the id is longer than {MAX_ID_BYTES} bytes,"
                                         " the limit of its index", field="external_id"))
        else:
            kept.append(rec)
    return kept, rejections


def write_isolated(
    conn: psycopg.Connection, records: list[NormalizedRecord], write: Write
) -> tuple[int, int, list[Rejection]]:
    """Write the records with `write(records, fresh_stage)`; (inserted, updated, rejections
    of the records the database refused). `fresh_stage` asks the write to empty its staging
    table first: a half written earlier in the same transaction left its rows there."""
    if not records:
        return 0, 0, []
    try:
        with conn.transaction():  # a savepoint: a failure leaves the chunk's transaction usable
            inserted, updated = write(records, False)
        return inserted, updated, []
    except Exception as exc:
        if not _is_record_fault(exc):
            raise
    return _by_halves(conn, records, write)


def _by_halves(
    conn: psycopg.Connection, records: list[NormalizedRecord], write: Write
) -> tuple[int, int, list[Rejection]]:
    """Write records whose write as a whole failed: each half in a savepoint, and a half
    that fails again by halves, down to single records, which are rejected."""
    if len(records) == 1:
        try:
            with conn.transaction():
                inserted, updated = write(records, True)
            return inserted, updated, []  # it failed only alongside others (a concurrent change)
        except Exception as exc:
            if not _is_record_fault(exc):
                raise
            return 0, 0, [_rejection(records[0], UNSTORABLE, f"refused by the database: {_message(exc)}")]
    middle = len(records) // 2
    inserted = updated = 0
    rejections: list[Rejection] = []
    for half in (records[:middle], records[middle:]):
        try:
            with conn.transaction():
                half_inserted, half_updated = write(half, True)
            half_rejections: list[Rejection] = []
        except Exception as exc:
            if not _is_record_fault(exc):
                raise
            half_inserted, half_updated, half_rejections = _by_halves(conn, half, write)
        inserted += half_inserted
        updated += half_updated
        rejections.extend(half_rejections)
    return inserted, updated, rejections


def _is_record_fault(exc: Exception) -> bool:
    if isinstance(exc, psycopg.Error):
        # DataError without a SQLSTATE: refused by psycopg itself before sending (a NUL byte)
        return isinstance(exc, psycopg.DataError) or (exc.sqlstate or "")[:2] in _RECORD_FAULT_CLASSES
    # raised adapting a value for the COPY: a lone surrogate has no UTF-8 encoding
    return isinstance(exc, (ValueError, TypeError, OverflowError))


def _message(exc: Exception) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        detail = exc.diag.message_detail
        return exc.diag.message_primary + (f" ({detail})" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def _rejection(rec: NormalizedRecord, reason: str, message: str, field: str | None = None) -> Rejection:
    item = rec.item
    raw = None if item is None else (item.record if item.record is not None else item.raw_text)
    return Rejection(reason=reason, message=message, field=field, line_no=None if item is None else item.line,
                     external_id=rec.external_id, raw=raw)
