"""Schema drift: which fields a source sends, of which types, and what changed.

Each chunk records the field types it saw (cheaply: one signature per distinct record
shape). Finalize merges them, compares with the source's known field set
(schema_fields) and records `added | removed | type_changed` events. The first run of a
source only sets the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

Signature = tuple[tuple[str, type], ...]

_TYPE_NAMES: dict[type, str] = {
    bool: "bool",
    int: "number",  # ints and floats are one type: 1 then 1.5 is not drift
    float: "number",
    str: "str",
    dict: "object",
    list: "array",
    datetime: "datetime",
    date: "date",
}


def type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def signature(data: dict[str, Any]) -> Signature:
    """The record's shape: (field, python type) of every non-null field."""
    return tuple((key, type(value)) for key, value in data.items() if value is not None)


def observed_fields(signatures: Iterable[Signature]) -> dict[str, str]:
    """Merge record shapes into {field: "type" or "type|type" when mixed}."""
    seen: dict[str, set[str]] = {}
    for sig in signatures:
        for key, kind in sig:
            seen.setdefault(key, set()).add(type_name(kind))
    return {key: "|".join(sorted(kinds)) for key, kinds in seen.items()}


def merge_observed(chunks: Iterable[dict[str, str] | None]) -> dict[str, str]:
    seen: dict[str, set[str]] = {}
    for observed in chunks:
        for key, kinds in (observed or {}).items():
            seen.setdefault(key, set()).update(kinds.split("|"))
    return {key: "|".join(sorted(kinds)) for key, kinds in seen.items()}


def misfit(sig: Signature, known: dict[str, str]) -> str | None:
    """The first field of a record shape that the known schema does not allow, or None."""
    for key, kind in sig:
        allowed = known.get(key)
        if allowed is None or type_name(kind) not in allowed.split("|"):
            return key
    return None


@dataclass(frozen=True)
class DriftEvent:
    kind: str  # added | removed | type_changed
    field: str
    old_type: str | None
    new_type: str | None

    def describe(self) -> str:
        if self.kind == "type_changed":
            return f"{self.field} {self.old_type}->{self.new_type}"
        return f"{self.kind} {self.field}"


def compare(known: dict[str, str], observed: dict[str, str]) -> list[DriftEvent]:
    events = [DriftEvent("added", f, None, observed[f]) for f in sorted(observed.keys() - known.keys())]
    events += [DriftEvent("removed", f, known[f], None) for f in sorted(known.keys() - observed.keys())]
    events += [
        DriftEvent("type_changed", f, known[f], observed[f])
        for f in sorted(known.keys() & observed.keys())
        if known[f] != observed[f]
    ]
    return events


def load_known(conn: psycopg.Connection, source: str) -> dict[str, str]:
    return dict(conn.execute("SELECT field, type FROM schema_fields WHERE source = %s", (source,)).fetchall())


def record_drift(
    conn: psycopg.Connection,
    *,
    source: str,
    run_id: int,
    observed: dict[str, str],
    adopt: bool = True,
    partial: bool = False,
) -> list[DriftEvent]:
    """Compare, store events and (when `adopt`) the new field set, inside the finalize
    transaction. on_drift = "reject" does not adopt: the known schema stays the contract.

    `partial`: some rows were recognised unchanged and never looked at (unchanged.py).
    Their records were observed by the run that stored them, so the known fields still
    stand for them: only additions (new fields, new types) are evidence, absences are not."""
    if not observed:
        return []  # nothing accepted this run: no evidence that fields disappeared
    known = load_known(conn, source)
    if partial and known:
        observed = merge_observed([observed, known])
    events = compare(known, observed) if known else []
    if events:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO drift_events (source, run_id, kind, field, old_type, new_type)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(source, run_id, e.kind, e.field, e.old_type, e.new_type) for e in events],
            )
    if (events and adopt) or not known:
        conn.execute("DELETE FROM schema_fields WHERE source = %s", (source,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO schema_fields (source, field, type, run_id) VALUES (%s, %s, %s, %s)",
                [(source, field, kind, run_id) for field, kind in sorted(observed.items())],
            )
    return events


def pause_source(conn: psycopg.Connection, *, source: str, kind: str, schedule: str, reason: str) -> None:
    """on_drift = "pause": disable the source until an operator resumes it."""
    conn.execute(
        "INSERT INTO sources (name, kind, enabled, schedule, config, paused_reason, updated_at)"
        " VALUES (%s, %s, true, %s, '{}'::jsonb, %s, now())"
        " ON CONFLICT (name) DO UPDATE SET paused_reason = excluded.paused_reason, updated_at = now()",
        (source, kind, schedule, reason),
    )


def paused_reason(conn: psycopg.Connection, source: str) -> str | None:
    row = conn.execute("SELECT paused_reason FROM sources WHERE name = %s", (source,)).fetchone()
    return row[0] if row else None
