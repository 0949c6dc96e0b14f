"""Leave unchanged rows out at the fetch stage.

A re-run of a large source in which a few rows changed should cost about what those
rows cost. Each row's raw digest (workers/pipeline/raw_digest.py) is compared, a batch at
a time, with the digest stored on its record; rows that match are counted and dropped
before they are stored as raw chunks, so they are never queued, decoded, normalised or
written. Only the changed rows (and the rows that cannot be recognised) travel on.

What makes dropping them safe:

- A row is recognised only when its record was stored from a raw row with the same
  digest, by an earlier run: the digest covers the row, the source's mapping and the
  normalising code, so the stored record is exactly what this row would produce.
- Records written by this very run are never recognised, so the decision for a row
  depends only on what the database held before the run started. A fetch re-driven
  after a crash therefore cuts the same rows into the same chunks as the first attempt
  (chunks already stored are kept as they were: see raw.store_chunk).
- An id that appears twice in one batch is never dropped: which copy wins stays the
  normaliser's decision, as without this filter.
- Sources with an incremental_field (their checkpoint comes from every row of the run)
  and sources with on_drift = "reject" (their rows are judged against a schema that may
  have changed since) are not filtered at all.

Skipped rows are still counted as fetched and unchanged (raw_chunks.skipped, then
chunk_ledger.skipped), and schema drift is judged with them in mind (finalize.py).
"""

from __future__ import annotations

import psycopg

from app.sources_config import SourceConfig
from workers.pipeline.raw_digest import DIGEST_BYTES, RowDigester
from workers.sources.base import RawItem

BATCH = 5000  # rows compared per query

# A few evenly spaced keys first: when none of them is recognisable (a first load, or
# new records), the batch is kept whole without comparing every row.
_SAMPLE_SIZE = 8
_RECOGNISABLE = """
SELECT count(*) FROM unnest(%(keys)s::text[]) AS k(id)
WHERE EXISTS (SELECT 1 FROM records r WHERE r.source = %(source)s AND r.external_id = k.id
              AND r.raw_digest IS NOT NULL AND r.last_run_id IS DISTINCT FROM %(run_id)s)
"""
# The positions (1-based) of the rows to keep. One correlated probe per key, an index scan
# on (source, external_id) whatever the statistics say; the digests travel as one bytea.
_TO_KEEP = f"""
SELECT k.n FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS k(id, n)
WHERE NOT EXISTS (
    SELECT 1 FROM records r
    WHERE r.source = %(source)s AND r.external_id = k.id
      AND r.raw_digest = substring(%(digests)s::bytea FROM (k.n::int - 1) * {DIGEST_BYTES} + 1 FOR {DIGEST_BYTES})
      AND r.last_run_id IS DISTINCT FROM %(run_id)s)
"""


def filters(source: SourceConfig) -> bool:
    """Whether this source's rows may be left out when unchanged (see the module notes)."""
    return source.incremental_field is None and source.on_drift != "reject"


class UnchangedRows:
    """Digests a run's raw items and drops those whose record is stored unchanged."""

    def __init__(self, conn: psycopg.Connection, *, run_id: int, source: SourceConfig):
        self.conn = conn
        self.run_id = run_id
        self.source_name = source.name
        self.enabled = filters(source)
        self._digester = RowDigester(source)

    def sift(self, items: list[RawItem]) -> tuple[list[RawItem], int]:
        """The items to keep, in order (their digests set), and how many were dropped."""
        if not self.enabled or not items:
            return items, 0
        key_of, digest_of = self._digester.key, self._digester.digest
        positions: list[int] = []  # index into items of every recognisable row
        keys: list[str] = []
        digests: list[bytes] = []
        for position, item in enumerate(items):
            record = item.record
            if type(record) is not dict:
                continue
            digest = digest_of(record)
            item.digest = digest
            key = key_of(record)
            if key is not None and digest is not None:
                positions.append(position)
                keys.append(key)
                digests.append(digest)
        if len(set(keys)) != len(keys):
            positions, keys, digests = _without_repeated_keys(positions, keys, digests)
        if not keys or not self._any_recognisable(keys):
            return items, 0
        with self.conn.transaction():
            # Thousands of probes add up to a plan cost above jit_above_cost; compiling
            # costs more than it saves. Transaction-scoped.
            self.conn.execute("SET LOCAL jit = off")
            kept = self.conn.execute(
                _TO_KEEP,
                {"keys": keys, "digests": b"".join(digests), "source": self.source_name, "run_id": self.run_id},
            ).fetchall()
        dropped = set(positions).difference(positions[n - 1] for (n,) in kept)
        if not dropped:
            return items, 0
        return [item for position, item in enumerate(items) if position not in dropped], len(dropped)

    def _any_recognisable(self, keys: list[str]) -> bool:
        sample = keys[:: max(1, len(keys) // _SAMPLE_SIZE)]
        row = self.conn.execute(
            _RECOGNISABLE, {"keys": sample, "source": self.source_name, "run_id": self.run_id}
        ).fetchone()
        self.conn.commit()
        return bool(row and row[0])


def _without_repeated_keys(
    positions: list[int], keys: list[str], digests: list[bytes]
) -> tuple[list[int], list[str], list[bytes]]:
    """Leave ids that occur more than once out of the comparison: all their copies are kept."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for key in keys:
        (repeated if key in seen else seen).add(key)
    chosen = [i for i, key in enumerate(keys) if key not in repeated]
    return [positions[i] for i in chosen], [keys[i] for i in chosen], [digests[i] for i in chosen]
