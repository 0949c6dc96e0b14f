"""Records: write a chunk's records, leaving out those stored unchanged.

Records whose stored content hash is the same are dropped first (one query per chunk):
unchanged records cost no write and no index churn. The rest travel by COPY: straight
into records when the chunk's keys look new (a first load), else into a temporary table,
then one INSERT ... SELECT ... ON CONFLICT whose WHERE clause still skips rows whose hash
did not change; `xmax = 0` in RETURNING tells inserts from updates.

Order within a run: an id may appear in several chunks of one run, and the copy that
comes last in the source must win whatever order the chunks commit in (chunks are cut in
source order, and a chunk holds one copy of each id: the normaliser keeps its last).
Every write records its run and chunk (last_run_id, last_chunk_no). A record this run
wrote is written by a chunk only when that chunk comes later, and then always, even with
unchanged content, so that its position is recorded; an older copy arriving after a
newer one changes nothing and is counted unchanged, as a copy superseded inside a chunk
is. A record of an earlier run is written when its content changed, and a later copy of
an id (flagged `repeat` by the fetch stage, workers/pipeline/fetch/repeats.py) is
written even when it did not: left out, it would leave the record marked as the earlier
run's, for an older copy of this run to overwrite. Writing only a position counts no
update and leaves updated_at.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from app.core.text import stored_json, stored_key, stored_text
from workers.pipeline.fetch.raw_digest import DIGEST_BYTES
from workers.pipeline.normalize.normalizer import NormalizedRecord

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

# Whether the stored record r was written by this run (an earlier or a later chunk), and
# whether such a record is written by this chunk: only from a later one, and always (see
# the module notes). NULL positions are from before positions were recorded.
_OWN_RUN = "r.last_run_id = %(run_id)s AND r.last_chunk_no IS NOT NULL"
_LATER_IN_RUN = "r.last_chunk_no < %(chunk_no)s"

# A record of another run is written when its content changed, or to record the position
# of a repeat (its key in %(repeats)s); only a changed content moves updated_at, which is
# how RETURNING tells an update from a position written.
_UPSERT_SQL = f"""
WITH written AS (
    INSERT INTO records AS r
        (source, external_id, title, content, author, url, published_at, data, content_hash, raw_digest, last_run_id,
         last_chunk_no)
    SELECT %(source)s, external_id, title, content, author, url, published_at, data, content_hash, raw_digest,
           %(run_id)s, %(chunk_no)s
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
        last_chunk_no = excluded.last_chunk_no,
        updated_at = CASE WHEN r.content_hash IS DISTINCT FROM excluded.content_hash THEN now() ELSE r.updated_at END
    WHERE CASE WHEN {_OWN_RUN} THEN {_LATER_IN_RUN}
               ELSE r.content_hash IS DISTINCT FROM excluded.content_hash
                    OR excluded.external_id = ANY(%(repeats)s::text[]) END
    RETURNING (xmax = 0) AS is_insert, updated_at = now() AS changed
)
SELECT count(*) FILTER (WHERE is_insert), count(*) FILTER (WHERE NOT is_insert AND changed) FROM written
"""

# A chunk whose keys look new (see _STORED_HASHES) is first copied straight into records,
# as the reference load would: no staging table, and no speculative insertion (ON
# CONFLICT costs PostgreSQL more CPU per row). If any key exists after all
# (stored meanwhile by a concurrent chunk with the same id), the unique index refuses the
# COPY, its savepoint is rolled back, and the chunk is compared and upserted as any other:
# the outcome is the same, only slower. Every row the COPY writes is new, so each carries
# its position and no position needs comparing.
_COPY_RECORDS = (
    "COPY records (source, external_id, title, content, author, url, published_at, data, content_hash,"
    " raw_digest, last_run_id, last_chunk_no) FROM STDIN"
)

_COPY_STAGE = (
    "COPY stage_records (external_id, title, content, author, url, published_at, data, content_hash, raw_digest)"
    " FROM STDIN"
)

# A re-run sends mostly records that did not change. Comparing their hashes first (an index
# probe each) costs far less than staging them: an unchanged row that reaches the upsert
# still costs a COPY row, a generated tsvector, a conflict check and a row lock. A first
# load has nothing to compare with, so a few evenly spaced keys are probed first, and when
# none of them is stored the chunk is taken for new records. A record changed meanwhile
# by a concurrent chunk of the same run holds another copy of the id: when that copy is
# the later one it wins anyway; when it is the earlier one, this copy goes to the upsert,
# which decides on the record as it then is. Either this copy is a repeat, never compared
# here, or (a source's first run, whose fetch flags none) the comparison found the record
# not stored, or written by an earlier chunk: both are sent on.
# One correlated probe per key: an index scan on (source, external_id) whatever the
# statistics say (`external_id = ANY(...)` turns into a sequential scan on a fresh table).
_STORED_HASHES = (
    "SELECT k.id, (SELECT content_hash FROM records r WHERE r.source = %s AND r.external_id = k.id)"
    " FROM unnest(%s::text[]) AS k(id)"
)
_PROBES = 8
# The comparison itself happens in PostgreSQL: the chunk's hashes and raw digests travel as
# one bytea each (32 and 16 bytes a record, in key order; zeros for no digest) and only the
# positions of the records with something to do come back, flagged when only the raw
# digest is to be refreshed. A record an earlier chunk of this run wrote is written (its
# position recorded) whatever its content; one a later chunk wrote is left alone.
_NO_DIGEST = bytes(DIGEST_BYTES)
_CHANGED_POSITIONS = f"""
SELECT k.n, r.content_hash = k.hash AND NOT coalesce({_OWN_RUN}, false) AS same_content
FROM (SELECT id, n, substring(%(hashes)s::bytea FROM (n::int - 1) * 32 + 1 FOR 32) AS hash,
             nullif(substring(%(digests)s::bytea FROM (n::int - 1) * {DIGEST_BYTES} + 1 FOR {DIGEST_BYTES}),
                    %(no_digest)s::bytea) AS digest
      FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS u(id, n)) AS k
LEFT JOIN LATERAL (
    -- LIMIT: kept a parameterised index probe per key, never flattened into a hash join
    SELECT content_hash, raw_digest, last_run_id, last_chunk_no FROM records r
    WHERE r.source = %(source)s AND r.external_id = k.id LIMIT 1
) AS r ON true
WHERE CASE WHEN {_OWN_RUN} THEN {_LATER_IN_RUN}
           ELSE r.content_hash IS DISTINCT FROM k.hash OR r.raw_digest IS DISTINCT FROM k.digest END
"""
# A record whose content is unchanged but whose raw digest is not (the normalising code or
# the mapping changed, or the upstream re-ordered keys): record the new digest, so that the
# next run recognises the row at the fetch stage. Not a change of the record: updated_at
# and the counts stay; last_run_id moves (see unchanged.py on why), with the position.
# Only records of another run come here; should a later chunk of this run write the
# record meanwhile, it is left to it.
_REFRESH_DIGESTS = f"""
UPDATE records r SET raw_digest = d.digest, last_run_id = %(run_id)s, last_chunk_no = %(chunk_no)s
FROM unnest(%(keys)s::text[], %(digests)s::bytea[]) AS d(id, digest)
WHERE r.source = %(source)s AND r.external_id = d.id AND CASE WHEN {_OWN_RUN} THEN {_LATER_IN_RUN} ELSE true END
"""


def write_records(
    conn: psycopg.Connection, *, source: str, run_id: int, chunk_no: int, records: list[NormalizedRecord],
    fresh_stage: bool = False,
) -> tuple[int, int]:
    """Write the chunk's records that differ from the stored ones (and the repeats);
    (inserted, updated). `fresh_stage`: empty the staging table first (records of this
    transaction may be there, when a chunk is written in parts: upsert/isolation.py)."""
    if not records:
        return 0, 0
    keys = [stored_key(rec.external_id) for rec in records]  # as stored
    if _look_new(conn, source, keys):
        inserted = _copy_new(conn, source=source, run_id=run_id, chunk_no=chunk_no, records=records)
        if inserted is not None:
            return inserted, 0
    to_write = _without_unchanged(conn, source, run_id, chunk_no, records, keys)
    if not to_write:
        return 0, 0
    return _upsert(conn, source=source, run_id=run_id, chunk_no=chunk_no, records=to_write, fresh_stage=fresh_stage)


def _stage_row(rec: NormalizedRecord) -> tuple[Any, ...]:
    data = rec.data_json
    if data is None:
        data = orjson.dumps(rec.data, option=orjson.OPT_NON_STR_KEYS).decode()
    # Every text column is read from the record (the id, or a mapped field of the coerced
    # data), and a NUL anywhere in it is escaped as \u0000 in its JSON: one search of the
    # JSON text clears the whole row. Only a row that holds one pays for scrubbing.
    if "\\u0000" in data:
        texts = (rec.external_id, rec.title, rec.content, rec.author, rec.url)
        return (*(stored_text(text) for text in texts), rec.published_at, stored_json(rec.data), rec.content_hash,
                rec.raw_digest)
    return (rec.external_id, rec.title, rec.content, rec.author, rec.url, rec.published_at, data,
            rec.content_hash, rec.raw_digest)


def _look_new(conn: psycopg.Connection, source: str, keys: list[str]) -> bool:
    """Whether none of a few evenly spaced keys is stored: a first load, or new records."""
    probes = keys[:: max(1, len(keys) // _PROBES)]
    return not any(stored for _, stored in conn.execute(_STORED_HASHES, (source, probes)))


def _without_unchanged(
    conn: psycopg.Connection,
    source: str,
    run_id: int,
    chunk_no: int,
    records: list[NormalizedRecord],
    keys: list[str],
) -> list[NormalizedRecord]:
    """The records whose content hash differs from the stored one (or that are not
    stored), and every repeat. Refreshes the raw digest of records whose content is
    unchanged but whose digest is not."""
    compared = records
    if any(rec.repeat for rec in records):
        compared = [rec for rec in records if not rec.repeat]
        keys = [key for key, rec in zip(keys, records, strict=True) if not rec.repeat]
        if not compared:
            return records
    hashes = b"".join(rec.content_hash for rec in compared)
    assert len(hashes) == 32 * len(compared)  # SHA-256 digests
    # Thousands of probes add up to a plan cost above jit_above_cost, and compiling that
    # plan costs more than it saves. Transaction-scoped.
    conn.execute("SET LOCAL jit = off")
    digests = b"".join(rec.raw_digest or _NO_DIGEST for rec in compared)
    differing = conn.execute(
        _CHANGED_POSITIONS,
        {"source": source, "run_id": run_id, "chunk_no": chunk_no, "keys": keys, "hashes": hashes, "digests": digests,
         "no_digest": _NO_DIGEST},
    ).fetchall()
    changed = [compared[n - 1] for n, same_content in differing if not same_content]
    refresh = [n - 1 for n, same_content in differing if same_content]
    if refresh:
        conn.execute(
            _REFRESH_DIGESTS,
            {"source": source, "run_id": run_id, "chunk_no": chunk_no, "keys": [keys[i] for i in refresh],
             "digests": [compared[i].raw_digest for i in refresh]},
        )
    if compared is not records:
        changed.extend(rec for rec in records if rec.repeat)
    return changed


def _copy_new(
    conn: psycopg.Connection, *, source: str, run_id: int, chunk_no: int, records: list[NormalizedRecord]
) -> int | None:
    """Copy records that look new straight into records; their number, or None when some
    key is stored after all (nothing is written then)."""
    try:
        with conn.transaction(), conn.cursor().copy(_COPY_RECORDS) as copy:  # a savepoint
            write_row = copy.write_row
            for rec in records:
                write_row((source, *_stage_row(rec), run_id, chunk_no))
        return len(records)
    except psycopg.errors.UniqueViolation:
        return None  # some key is stored after all: the chunk is compared and upserted instead


def _upsert(
    conn: psycopg.Connection, *, source: str, run_id: int, chunk_no: int, records: list[NormalizedRecord],
    fresh_stage: bool,
) -> tuple[int, int]:
    """Stage the records and upsert them (sorted by key: concurrent chunks take index locks
    in one order); (inserted, updated)."""
    conn.execute(_STAGE_DDL)
    if fresh_stage:
        conn.execute("DELETE FROM stage_records")
    with conn.cursor().copy(_COPY_STAGE) as copy:
        write_row = copy.write_row
        for rec in records:
            write_row(_stage_row(rec))
    repeats = [stored_key(rec.external_id) for rec in records if rec.repeat]
    params = {"source": source, "run_id": run_id, "chunk_no": chunk_no, "repeats": repeats}
    inserted, updated = conn.execute(_UPSERT_SQL, params).fetchone()  # type: ignore[misc]
    return inserted, updated
