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

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg

from app.sources_config import SourceConfig
from workers.pipeline.raw_digest import DIGEST_BYTES, RowDigester
from workers.sources.base import RawItem

GIL_SWITCH_INTERVAL_S = 0.001  # while a fetch runs (see UnchangedRows.__enter__)
SEP = "\x1e"  # joins a batch's keys into one parameter (see _TO_KEEP)
PROBE_THREADS = 2  # batches compared at once, each on its own connection
BATCH = 5000  # rows compared per query, at most (the fetch stage sends a chunk's worth)

# A few evenly spaced keys first: when none of them is recognisable (a first load, or
# new records), the batch is kept whole without comparing every row.
_SAMPLE_SIZE = 8
_RECOGNISABLE = """
SELECT count(*) FROM string_to_table(%(keys)s, %(sep)s) AS k(id)
WHERE (SELECT r.raw_digest FROM records r
       WHERE r.source = %(source)s AND r.external_id = k.id AND r.last_run_id IS DISTINCT FROM %(run_id)s) IS NOT NULL
"""
# The positions (1-based) of the rows to keep: a nested loop of index probes on (source,
# external_id), one per key. The probe connection allows no other plan (see
# _PROBE_SETTINGS): an anti-join planned from a fresh table's statistics once read the
# whole source instead, and a join costs PostgreSQL 40% less than a scalar subquery per
# key. The keys travel as one text joined by SEP (psycopg dumps a 5,000-element array in
# Python, holding the GIL the fetch stage needs), the digests as one bytea, 16 bytes a
# row in key order, sent in binary (%b).
_TO_KEEP = f"""
SELECT k.n FROM string_to_table(%(keys)s, %(sep)s) WITH ORDINALITY AS k(id, n)
LEFT JOIN records r
  ON r.source = %(source)s AND r.external_id = k.id AND r.last_run_id IS DISTINCT FROM %(run_id)s
WHERE r.raw_digest IS DISTINCT FROM
      substring(%(digests)b::bytea FROM (k.n::int - 1) * {DIGEST_BYTES} + 1 FOR {DIGEST_BYTES})
"""
# Session settings of the probe connection, which runs nothing but these two queries.
# Thousands of probes add up to a plan cost above jit_above_cost, and compiling costs
# more than it saves; the rest leave a nested loop over the unique index as the only plan.
_PROBE_SETTINGS = (
    "SET jit = off",
    "SET enable_hashjoin = off",
    "SET enable_mergejoin = off",
    "SET enable_seqscan = off",
    "SET enable_bitmapscan = off",
)


def filters(source: SourceConfig) -> bool:
    """Whether this source's rows may be left out when unchanged (see the module notes)."""
    return source.incremental_field is None and source.on_drift != "reject"


Sifted = Callable[[], tuple[list[RawItem], int]]


class UnchangedRows:
    """Digests a run's raw items and drops those whose record is stored unchanged.

    The comparison runs in PostgreSQL (an index probe per row) on connections of its own,
    from PROBE_THREADS helper threads: while the database compares batches, the fetch
    stage reads and digests the next (psycopg releases the GIL while it waits). Two
    backends compare at once: with one, the fetch stage of a 1M-row re-run waited about
    1 s of its 5 for answers, on a machine whose second core was then half idle. Use as a
    context manager: leaving it stops the threads and closes their connections.
    """

    def __init__(self, conn: psycopg.Connection, *, run_id: int, source: SourceConfig):
        self.conn = conn
        self.run_id = run_id
        self.source_name = source.name
        self.enabled = filters(source)
        self._digester = RowDigester(source)
        self._executor: ThreadPoolExecutor | None = None
        self._opened: list[psycopg.Connection] = []  # one per helper thread, at most
        self._idle: list[psycopg.Connection] = []  # of those, the ones not comparing now

    def __enter__(self) -> UnchangedRows:
        # The helper thread needs the GIL for a moment to send each batch and again to take
        # its answer, while this thread parses without pause: with the default 5 ms switch
        # interval every batch waited up to twice that (3 of 15 s on a 1M-row re-run).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_INTERVAL_S))
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.setswitchinterval(self._switch_interval)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for probe_conn in self._opened:
            probe_conn.close()

    def submit(self, items: list[RawItem]) -> Sifted:
        """Start sifting a batch (its digests are set now); the returned function gives the
        items to keep, in order, and how many were dropped."""
        if not self.enabled or not items:
            return lambda: (items, 0)
        positions, keys, digests = self._recognisable(items)
        if not keys:
            return lambda: (items, 0)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="unchanged-rows")
        probe = self._executor.submit(self._rows_to_keep, keys, b"".join(digests))

        def sifted() -> tuple[list[RawItem], int]:
            to_keep = probe.result()
            if to_keep is None:
                return items, 0
            dropped = set(positions).difference(positions[n - 1] for n in to_keep)
            if not dropped:
                return items, 0
            return [item for position, item in enumerate(items) if position not in dropped], len(dropped)

        return sifted

    def _recognisable(self, items: list[RawItem]) -> tuple[list[int], list[str], list[bytes]]:
        """Set every record's digest; the positions, keys and digests of those that could be
        recognised (a usable id, not repeated in the batch)."""
        key_of, digest_of = self._digester.key, self._digester.digest
        positions: list[int] = []
        keys: list[str] = []
        digests: list[bytes] = []
        for position, item in enumerate(items):
            digest = item.digest = digest_of(item)
            if digest is None:
                continue
            key = key_of(item)
            if key is not None:
                positions.append(position)
                keys.append(key)
                digests.append(digest)
        if len(set(keys)) != len(keys):
            return _without_repeated_keys(positions, keys, digests)
        return positions, keys, digests

    def _rows_to_keep(self, keys: list[str], digests: bytes) -> list[int] | None:
        """In a helper thread: the 1-based positions to keep, None for all of them."""
        conn = self._idle.pop() if self._idle else self._connect()
        try:
            return self._compare(conn, keys, digests)
        finally:
            self._idle.append(conn)

    def _compare(self, conn: psycopg.Connection, keys: list[str], digests: bytes) -> list[int] | None:
        params = {"source": self.source_name, "run_id": self.run_id, "sep": SEP}
        sample = keys[:: max(1, len(keys) // _SAMPLE_SIZE)]
        row = conn.execute(_RECOGNISABLE, {**params, "keys": SEP.join(sample)}).fetchone()
        if not (row and row[0]):
            return None
        joined = SEP.join(keys)
        if joined.count(SEP) != len(keys) - 1:
            return None  # a key holds the separator itself: keep the batch, never mistake a row
        return [n for (n,) in conn.execute(_TO_KEEP, {**params, "keys": joined, "digests": digests})]

    def _connect(self) -> psycopg.Connection:
        info = self.conn.info
        probe_conn = psycopg.connect(info.dsn, password=info.password, autocommit=True)
        self._opened.append(probe_conn)
        for setting in _PROBE_SETTINGS:
            probe_conn.execute(setting)
        return probe_conn


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
