"""Upsert: write one normalised chunk, its rejections and its ledger row in ONE transaction.

The ledger row (run_id, chunk_no) is inserted first: a second delivery of the same
chunk either finds it committed (and does nothing) or waits on the first delivery's
unique-index entry and then finds it. So a chunk that runs twice changes nothing the
second time.

Records whose stored content hash is the same are dropped first (one query per chunk):
unchanged records cost no write and no index churn. The rest travel by COPY: straight
into records when the chunk's keys look new (a first load), else into a temporary table,
then one INSERT ... SELECT ... ON CONFLICT whose WHERE clause still skips rows whose hash
did not change; `xmax = 0` in RETURNING tells inserts from updates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from app.core.text import stored_key
from workers.pipeline.fetch.raw_digest import DIGEST_BYTES
from workers.pipeline.normalize.normalizer import NormalizedChunk, NormalizedRecord

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_records (
    external_id  text COLLATE "C" NOT NULL,
    title        text,
    content      text,
    author       text,
    url          text,
    published_at timestamptz,
    data         jsonb NOT NULL,
    content_hash bytea NOT NULL,
    raw_digest   bytea
) ON COMMIT DELETE ROWS
"""

_UPSERT_SQL = """
WITH written AS (
    INSERT INTO records AS r
        (source, external_id, title, content, author, url, published_at, data, content_hash, raw_digest, last_run_id)
    SELECT %(source)s, external_id, title, content, author, url, published_at, data, content_hash, raw_digest,
           %(run_id)s
    FROM stage_records
    ORDER BY external_id
    ON CONFLICT (source, external_id) DO UPDATE SET
        title = excluded.title,
        content = excluded.content,
        author = excluded.author,
        url = excluded.url,
        published_at = excluded.published_at,
        data = excluded.data,
        content_hash = excluded.content_hash,
        raw_digest = excluded.raw_digest,
        last_run_id = excluded.last_run_id,
        updated_at = now()
    WHERE r.content_hash IS DISTINCT FROM excluded.content_hash
    RETURNING (xmax = 0) AS is_insert
)
SELECT count(*) FILTER (WHERE is_insert), count(*) FILTER (WHERE NOT is_insert) FROM written
"""

# A chunk whose keys look new (see _STORED_HASHES) is first copied straight into records,
# as the reference load would: no staging table, and no speculative insertion (ON
# CONFLICT costs about a quarter more PostgreSQL CPU per row). If any key exists after all
# (stored meanwhile by a concurrent chunk with the same id), the unique index refuses the
# COPY, its savepoint is rolled back, and the chunk takes the staged upsert: the outcome
# is the same, only slower.
_COPY_RECORDS = (
    "COPY records (source, external_id, title, content, author, url, published_at, data, content_hash,"
    " raw_digest, last_run_id) FROM STDIN"
)

_COPY_STAGE = (
    "COPY stage_records (external_id, title, content, author, url, published_at, data, content_hash, raw_digest)"
    " FROM STDIN"
)

# A re-run sends mostly records that did not change. Comparing their hashes first (an index
# probe each) costs about a third of staging them: an unchanged row that reaches the upsert
# still costs a COPY row, a generated tsvector, a conflict check and a row lock. A first
# load has nothing to compare with, so a few evenly spaced keys are probed first, and when
# none of them is stored the chunk is taken for new records. Dropping rows here is only
# an optimisation: the upsert's own WHERE still guards a record changed meanwhile (by a
# concurrent chunk of the same run carrying the same id).
# One correlated probe per key: an index scan on (source, external_id) whatever the
# statistics say (`external_id = ANY(...)` turns into a sequential scan on a fresh table).
_STORED_HASHES = (
    "SELECT k.id, (SELECT content_hash FROM records r WHERE r.source = %s AND r.external_id = k.id)"
    " FROM unnest(%s::text[]) AS k(id)"
)
_PROBES = 8
# The comparison itself happens in PostgreSQL: the chunk's hashes and raw digests travel as
# one bytea each (32 and 16 bytes a record, in key order; zeros for no digest) and only the
# positions of the records that differ come back, flagged when only the raw digest differs.
_NO_DIGEST = bytes(DIGEST_BYTES)
_CHANGED_POSITIONS = f"""
SELECT k.n, r.content_hash IS NOT NULL AND r.content_hash = k.hash AS same_content
FROM (SELECT id, n, substring(%(hashes)s::bytea FROM (n::int - 1) * 32 + 1 FOR 32) AS hash,
             nullif(substring(%(digests)s::bytea FROM (n::int - 1) * {DIGEST_BYTES} + 1 FOR {DIGEST_BYTES}),
                    %(no_digest)s::bytea) AS digest
      FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS u(id, n)) AS k
LEFT JOIN LATERAL (
    -- LIMIT: kept a parameterised index probe per key, never flattened into a hash join
    SELECT content_hash, raw_digest FROM records r WHERE r.source = %(source)s AND r.external_id = k.id LIMIT 1
) AS r ON true
WHERE r.content_hash IS DISTINCT FROM k.hash OR r.raw_digest IS DISTINCT FROM k.digest
"""
# A record whose content is unchanged but whose raw digest is not (the normalising code or
# the mapping changed, or the upstream re-ordered keys): record the new digest, so that the
# next run recognises the row at the fetch stage. Not a change of the record: updated_at
# and the counts stay; last_run_id moves (see unchanged.py on why).
_REFRESH_DIGESTS = """
UPDATE records r SET raw_digest = d.digest, last_run_id = %(run_id)s
FROM unnest(%(keys)s::text[], %(digests)s::bytea[]) AS d(id, digest)
WHERE r.source = %(source)s AND r.external_id = d.id
"""

_COPY_REJECTS = (
    "COPY rejected_records (run_id, source, chunk_no, line_no, external_id, reason, field, message, raw) FROM STDIN"
)


@dataclass(frozen=True)
class ChunkCounts:
    fetched: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int


_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _scrub(value: Any) -> Any:
    """Replace NUL characters, which PostgreSQL text and jsonb cannot hold."""
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"\\u0000" in text:  # rare: only then pay for a scrubbing pass
        text = orjson.dumps(_scrub(value), option=orjson.OPT_NON_STR_KEYS)
    return text.decode()


def _strip_nul(text: str | None) -> str | None:
    return text.replace(_NUL, _REPLACEMENT) if text and _NUL in text else text


def _stage_row(rec: NormalizedRecord) -> tuple[Any, ...]:
    data = rec.data_json
    if data is None:
        data = orjson.dumps(rec.data, option=orjson.OPT_NON_STR_KEYS).decode()
    # Every text column is read from the record (the id, or a mapped field of the coerced
    # data), and a NUL anywhere in it is escaped as \u0000 in its JSON: one search of the
    # JSON text clears the whole row. Only a row that holds one pays for scrubbing.
    if "\\u0000" in data:
        texts = (rec.external_id, rec.title, rec.content, rec.author, rec.url)
        return (*(_strip_nul(text) for text in texts), rec.published_at, _json_text(rec.data), rec.content_hash,
                rec.raw_digest)
    return (rec.external_id, rec.title, rec.content, rec.author, rec.url, rec.published_at, data,
            rec.content_hash, rec.raw_digest)


def _without_unchanged(
    conn: psycopg.Connection, source: str, run_id: int, records: list[NormalizedRecord]
) -> tuple[list[NormalizedRecord], bool]:
    """The records whose content hash differs from the stored one (or that are not stored),
    and whether they look new (no probed key stored). Refreshes the raw digest of records
    whose content is unchanged but whose digest is not."""
    keys = [stored_key(rec.external_id) for rec in records]  # as stored
    probes = keys[:: max(1, len(keys) // _PROBES)]
    if not any(stored for _, stored in conn.execute(_STORED_HASHES, (source, probes))):
        return records, True  # a first load (or new records): nothing to compare with
    hashes = b"".join(rec.content_hash for rec in records)
    assert len(hashes) == 32 * len(records)  # SHA-256 digests
    # Thousands of probes add up to a plan cost above jit_above_cost, and compiling it took
    # longer (8 ms a chunk) than it saved. Transaction-scoped.
    conn.execute("SET LOCAL jit = off")
    digests = b"".join(rec.raw_digest or _NO_DIGEST for rec in records)
    differing = conn.execute(
        _CHANGED_POSITIONS,
        {"source": source, "keys": keys, "hashes": hashes, "digests": digests, "no_digest": _NO_DIGEST},
    ).fetchall()
    changed = [records[n - 1] for n, same_content in differing if not same_content]
    refresh = [n - 1 for n, same_content in differing if same_content]
    if refresh:
        conn.execute(
            _REFRESH_DIGESTS,
            {"source": source, "run_id": run_id, "keys": [keys[i] for i in refresh],
             "digests": [records[i].raw_digest for i in refresh]},
        )
    return changed, False


def _write_records(
    conn: psycopg.Connection, *, source: str, run_id: int, records: list[NormalizedRecord], look_new: bool
) -> tuple[int, int]:
    """Write the records (sorted by key: concurrent chunks take index locks in one order);
    (inserted, updated)."""
    if look_new:
        try:
            with conn.transaction(), conn.cursor().copy(_COPY_RECORDS) as copy:  # a savepoint
                write_row = copy.write_row
                for rec in records:
                    write_row((source, *_stage_row(rec), run_id))
            return len(records), 0
        except psycopg.errors.UniqueViolation:
            pass  # some key is stored after all: the upsert sorts it out
    conn.execute(_STAGE_DDL)
    with conn.cursor().copy(_COPY_STAGE) as copy:
        write_row = copy.write_row
        for rec in records:
            write_row(_stage_row(rec))
    inserted, updated = conn.execute(_UPSERT_SQL, {"source": source, "run_id": run_id}).fetchone()  # type: ignore[misc]
    return inserted, updated


def write_chunk(
    conn: psycopg.Connection,
    *,
    run_id: int,
    chunk_no: int,
    source: str,
    fetched: int,
    chunk: NormalizedChunk,
    skipped: int = 0,
    started: float | None = None,
) -> ChunkCounts | None:
    """Commit one chunk; return its counts, or None when it was already committed or the
    run is no longer active (failed runs take no more data). `fetched` counts the chunk's
    rows, `skipped` the rows the fetch stage recognised unchanged and left out before it
    (both are fetched; the skipped are unchanged). `started` (time.monotonic() when the
    chunk's task began) gives the ledger's duration_ms."""
    with conn.transaction():
        # FOR KEY SHARE: chunks commit concurrently, and the fetch stage's heartbeat (an UPDATE
        # of non-key columns) does not wait for them, but finalize/fail (FOR UPDATE) wait for
        # in-flight chunks, so a run's counts always equal the sum of its ledger.
        active = conn.execute(
            "SELECT 1 FROM runs WHERE id = %s AND status = 'running' FOR KEY SHARE", (run_id,)
        ).fetchone()
        if active is None:
            return None
        claimed = conn.execute(
            "INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected)"
            " VALUES (%s, %s, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING RETURNING 1",
            (run_id, chunk_no),
        ).fetchone()
        if claimed is None:
            return None
        inserted = updated = 0
        changed, look_new = _without_unchanged(conn, source, run_id, chunk.records) if chunk.records else ([], False)
        if changed:
            inserted, updated = _write_records(conn, source=source, run_id=run_id, records=changed, look_new=look_new)
        if chunk.rejections:
            with conn.cursor().copy(_COPY_REJECTS) as copy:
                for rej in chunk.rejections:
                    copy.write_row(
                        (
                            run_id, source, chunk_no, rej.line_no, _strip_nul(rej.external_id), rej.reason,
                            rej.field, _strip_nul(rej.message), _strip_nul(_json_text(rej.raw)),
                        )
                    )
        rejected = len(chunk.rejections)
        counts = ChunkCounts(
            fetched=fetched + skipped,
            inserted=inserted,
            updated=updated,
            unchanged=fetched + skipped - inserted - updated - rejected,
            rejected=rejected,
        )
        conn.execute(
            "UPDATE chunk_ledger SET fetched = %s, inserted = %s, updated = %s, unchanged = %s, rejected = %s,"
            " skipped = %s, max_incremental = %s::jsonb, observed_fields = %s::jsonb, committed_at = now(),"
            " duration_ms = %s WHERE run_id = %s AND chunk_no = %s",
            (counts.fetched, counts.inserted, counts.updated, counts.unchanged, counts.rejected, skipped,
             _json_text(chunk.max_incremental), _json_text(chunk.observed),
             None if started is None else round((time.monotonic() - started) * 1000), run_id, chunk_no),
        )
        if inserted or rejected:
            conn.execute(
                "INSERT INTO source_stats (source, records, rejected) VALUES (%s, %s, %s)"
                " ON CONFLICT (source) DO UPDATE SET records = source_stats.records + excluded.records,"
                " rejected = source_stats.rejected + excluded.rejected",
                (source, inserted, rejected),
            )
    return counts
