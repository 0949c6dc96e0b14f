"""Leave unchanged rows out at the fetch stage.

A re-run of a large source in which a few rows changed should cost about what those
rows cost. Each row's raw digest (workers/pipeline/fetch/raw_digest.py) is compared, a batch at
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
  normaliser's decision, as without this filter. Nor is a later copy of an id an
  earlier batch kept: it is flagged a repeat instead (repeats.py), so that an older copy
  committed after it cannot win.
- Sources with an incremental_field (their checkpoint comes from every row of the run)
  and sources with on_drift = "reject" (their rows are judged against a schema that may
  have changed since) are not filtered at all.

Skipped rows are still counted as fetched and unchanged (raw_chunks.skipped, then
chunk_ledger.skipped), and schema drift is judged with them in mind (finalize.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg

from app.core.sources_config import SourceConfig
from workers.pipeline.fetch.raw_digest import DIGEST_BYTES, RowDigester
from workers.pipeline.fetch.repeats import KeptIds
from workers.sources.base import RawItem, RowBatch

GIL_SWITCH_INTERVAL_S = 0.001  # while a fetch runs (see UnchangedRows.__enter__)
SEP = "\x1e"  # joins a batch's keys into one parameter (see _TO_KEEP)
PROBE_THREADS = 2  # batches compared at once, each on its own connection
BATCH = 5000  # rows compared per query, at most (the fetch stage sends a chunk's worth)

# A few evenly spaced keys first: when none of them is recognisable (a first load, or
# new records), the batch is kept whole without comparing every row. Their records' ids
# also tell where the rest of the batch probably is (see _likely_ids).
_SAMPLE_SIZE = 16
_SAMPLE_IDS = """
SELECT r.id FROM string_to_table(%(keys)s, %(sep)s) AS k(id)
JOIN LATERAL (SELECT id FROM records r
              WHERE r.source = %(source)s AND r.external_id = k.id AND r.last_run_id IS DISTINCT FROM %(run_id)s
                AND r.raw_digest IS NOT NULL LIMIT 1) r ON true
"""
# The positions (1-based) of the rows to keep. The records of a batch's rows were usually
# stored together (by one chunk of an earlier run), so they mostly lie in one range of
# ids: one scan of that range, hashed and joined to the keys, costs PostgreSQL about a
# third of an index probe per key. A key not found in the range (a row moved, new, or written by
# this run) is probed on its own, so the range only decides the cost, never the answer;
# an empty range (lo > hi) probes every key. The keys travel as one text joined by SEP
# (psycopg dumps a 5,000-element array in Python, holding the GIL the fetch stage needs),
# the digests as one bytea, 16 bytes a row in key order, sent in binary (%b).
_TO_KEEP = f"""
SELECT k.n FROM string_to_table(%(keys)s, %(sep)s) WITH ORDINALITY AS k(id, n)
LEFT JOIN (SELECT external_id, raw_digest FROM records
           WHERE id BETWEEN %(lo)s AND %(hi)s AND source = %(source)s
             AND last_run_id IS DISTINCT FROM %(run_id)s) r ON r.external_id = k.id
WHERE CASE WHEN r.external_id IS NOT NULL THEN r.raw_digest
      ELSE (SELECT p.raw_digest FROM records p
            WHERE p.source = %(source)s AND p.external_id = k.id AND p.last_run_id IS DISTINCT FROM %(run_id)s) END
      IS DISTINCT FROM substring(%(digests)b::bytea FROM (k.n::int - 1) * {DIGEST_BYTES} + 1 FOR {DIGEST_BYTES})
"""
# A range wider than this many ids a key is not worth reading: the keys are probed instead.
_RANGE_PER_KEY = 3
# Session settings of the probe connection, which runs nothing but these two queries.
# Thousands of probes add up to a plan cost above jit_above_cost, and compiling costs
# more than it saves. The rest leave one plan: the range read by the primary key and
# hashed, each other key probed through the unique index (a subquery, which no join
# setting affects). Without them, an anti-join planned from a fresh table's statistics
# once read the whole source.
_PROBE_SETTINGS = (
    "SET jit = off",
    "SET enable_nestloop = off",
    "SET enable_mergejoin = off",
    "SET enable_seqscan = off",
    "SET enable_bitmapscan = off",
)


def filters(source: SourceConfig) -> bool:
    """Whether this source's rows may be left out when unchanged (see the module notes)."""
    return source.incremental_field is None and source.on_drift != "reject"


Sifted = Callable[[], tuple[list[RawItem], int]]


class UnchangedRows:
    """Digests a run's raw items and drops those whose record is stored unchanged; flags
    the later copies of an id (repeats.py), whether the source is filtered or not.

    The comparison runs in PostgreSQL (an index probe per row) on connections of its own,
    from PROBE_THREADS helper threads: while the database compares batches, the fetch
    stage reads and digests the next (psycopg releases the GIL while it waits). Two
    backends compare at once: with one, the fetch stage of a 1M-row re-run waited about
    1 s of its 5 for answers, on a machine whose second core was then half idle. Use as a
    context manager: leaving it stops the threads and closes their connections.
    """

    def __init__(self, conn: psycopg.Connection, *, run_id: int, source: SourceConfig, first_run: bool = False):
        self.conn = conn
        self.run_id = run_id
        self.source_name = source.name
        self.enabled = filters(source)
        self._digester = RowDigester(source)
        # A source's first run has nothing an earlier run stored: no repeat to flag (repeats.py).
        self.kept = None if first_run else KeptIds()
        self._executor: ThreadPoolExecutor | None = None
        self._opened: list[psycopg.Connection] = []  # one per helper thread, at most
        self._idle: list[psycopg.Connection] = []  # of those, the ones not comparing now

    def __enter__(self) -> UnchangedRows:
        # The helper thread needs the GIL for a moment to send each batch and again to take
        # its answer, while this thread parses without pause: with the default 5 ms switch
        # interval every batch would wait up to twice that for it.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_INTERVAL_S))
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.setswitchinterval(self._switch_interval)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for probe_conn in self._opened:
            probe_conn.close()

    def submit(self, batch: list[RawItem] | RowBatch) -> Sifted:
        """Start sifting a batch of a filtered source (its digests are set now); the returned
        function, called for each batch in order, gives the items to keep, in order, and how
        many were dropped."""
        if isinstance(batch, RowBatch):
            return self._submit_rows(batch)
        items = batch
        if not self.enabled:
            kept = [self.flag_repeat(item) for item in items]
            return lambda: (kept, 0)
        if not items:
            return lambda: (items, 0)
        all_keys, positions, keys, digests = self._recognisable(items)
        probe = self._probe(keys, digests) if keys else None

        def sifted() -> tuple[list[RawItem], int]:
            to_keep = None if probe is None else probe.result()
            kept: list[int] | None = None
            if to_keep is not None:
                dropped = set(positions).difference(positions[n - 1] for n in to_keep)
                if dropped:
                    kept = [position for position in range(len(items)) if position not in dropped]
            kept, repeats = self._settle(all_keys, kept)
            for position in repeats:
                items[position].repeat = True
            if kept is None:
                return items, 0
            return [items[position] for position in kept], len(items) - len(kept)

        return sifted

    def flag_repeat(self, item: RawItem) -> RawItem:
        """For an item of a source that is not filtered, kept as it comes: flag it when it
        repeats an id kept before."""
        if self.kept is None:
            return item
        key = self._digester.key(item)
        if key is not None and self.kept.keep([key]):
            item.repeat = True
        return item

    def _submit_rows(self, batch: RowBatch) -> Sifted:
        """submit() for a batch of tabular rows: keys and digests are taken a batch at a
        time, and an object is made only for each row kept."""
        keys, digests = self._digester.tabular(batch)
        usable = [key for key in keys if key is not None]
        positions: list[int] | None = None  # of the rows compared; None: every row, in order
        compared_digests = digests
        if usable and (len(usable) != len(keys) or len(set(usable)) != len(usable)):
            candidates = [position for position, key in enumerate(keys) if key is not None]
            positions, usable, compared_digests = _without_repeated_keys(
                candidates, usable, [digests[position] for position in candidates]
            )
        probe = self._probe(usable, compared_digests) if usable and self.enabled else None

        def sifted() -> tuple[list[RawItem], int]:
            to_keep = None if probe is None else probe.result()
            kept: list[int] | None = None
            if to_keep is not None and positions is None:
                kept = sorted(n - 1 for n in to_keep)
            elif to_keep is not None:
                assert positions is not None
                not_compared = set(range(len(keys))).difference(positions)
                kept = sorted(not_compared.union(positions[n - 1] for n in to_keep))
            if kept is not None and len(kept) == len(keys):
                kept = None
            kept, repeats = self._settle(keys, kept)
            return batch.items(digests, kept, repeats), 0 if kept is None else len(keys) - len(kept)

        return sifted

    def _settle(self, keys: list[str | None], kept: list[int] | None) -> tuple[list[int] | None, set[int]]:
        """Of a batch's rows (their keys, in order, None for no usable key) and those the
        comparison would keep (positions, ascending; None: all): the positions to keep and
        those of the repeats among them. Called for each batch in order: a repeat is never
        dropped, and the keys kept here are remembered for the batches after it."""
        kept_ids = self.kept
        if kept_ids is None:
            return kept, set()
        if kept is not None and kept_ids:
            held = kept_ids.holding(keys)  # repeats the comparison would drop among them
            if held and not set(held).issubset(kept):
                kept = sorted(set(kept).union(held))
                if len(kept) == len(keys):
                    kept = None
        if kept is None and None not in keys:  # every row kept, every id usable: a first load's batches
            return None, set(kept_ids.keep(keys))  # type: ignore[arg-type]
        with_key = [position for position in (range(len(keys)) if kept is None else kept) if keys[position] is not None]
        found = kept_ids.keep([keys[position] for position in with_key])  # type: ignore[misc]
        return kept, {with_key[n] for n in found}

    def _probe(self, keys: list[str], digests: list[bytes]) -> Future[list[int] | None]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="unchanged-rows")
        return self._executor.submit(self._rows_to_keep, keys, b"".join(digests))

    def _recognisable(self, items: list[RawItem]) -> tuple[list[str | None], list[int], list[str], list[bytes]]:
        """Set every record's digest; every item's key (None: no usable id), and the
        positions, keys and digests of those that could be recognised (a usable id and a
        digest, the id not repeated in the batch)."""
        key_of, digest_of = self._digester.key, self._digester.digest
        all_keys: list[str | None] = []
        positions: list[int] = []
        keys: list[str] = []
        digests: list[bytes] = []
        for position, item in enumerate(items):
            digest = item.digest = digest_of(item)
            key = key_of(item)
            all_keys.append(key)
            if digest is not None and key is not None:
                positions.append(position)
                keys.append(key)
                digests.append(digest)
        if len(set(keys)) != len(keys):
            return all_keys, *_without_repeated_keys(positions, keys, digests)
        return all_keys, positions, keys, digests

    def _rows_to_keep(self, keys: list[str], digests: bytes) -> list[int] | None:
        """In a helper thread: the 1-based positions to keep, None for all of them."""
        conn = self._idle.pop() if self._idle else self._connect()
        try:
            return self._compare(conn, keys, digests)
        finally:
            self._idle.append(conn)

    def _compare(self, conn: psycopg.Connection, keys: list[str], digests: bytes) -> list[int] | None:
        joined = SEP.join(keys)
        if joined.count(SEP) != len(keys) - 1:
            return None  # a key holds the separator itself: keep the batch, never mistake a row
        params = {"source": self.source_name, "run_id": self.run_id, "sep": SEP}
        step = max(1, len(keys) // _SAMPLE_SIZE)
        found = [record_id for (record_id,) in conn.execute(_SAMPLE_IDS, {**params, "keys": SEP.join(keys[::step])})]
        if not found:
            return None
        lo, hi = _likely_ids(found, margin=2 * step, count=len(keys))
        rows = conn.execute(_TO_KEEP, {**params, "keys": joined, "digests": digests, "lo": lo, "hi": hi})
        return [n for (n,) in rows]

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


def _likely_ids(found: list[int], *, margin: int, count: int) -> tuple[int, int]:
    """The range of record ids that probably holds a batch of `count` keys, from the ids of
    evenly spaced sampled keys: the records of one chunk get a block of ids (in key order,
    not file order), so the sample's extremes, widened by `margin`, cover nearly all of
    them. An empty range when that would be too wide to be worth reading."""
    lo, hi = min(found) - margin, max(found) + margin
    if hi - lo + 1 > _RANGE_PER_KEY * count:
        return 1, 0
    return lo, hi
