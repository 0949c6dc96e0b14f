"""Table definitions (SQLAlchemy Core), used by the API's queries.

The DDL itself lives in the Alembic migrations (app/db/migrations/versions), which also
create what Core cannot express neatly: the generated tsvector column, the partial
unique index that allows one active run per source.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR, UUID

metadata = MetaData()

sources = Table(
    "sources",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("schedule", Text, nullable=False),
    Column("config", JSONB, nullable=False),
    Column("paused_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("source", Text, primary_key=True),
    Column("value", JSONB),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("file_hash", Text),
    Column("run_id", BigInteger),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("source", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("config", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("chunks_total", Integer),
    Column("fetch_attempts", Integer, nullable=False),
    Column("fetch_state", JSONB),
    Column("fetched", BigInteger, nullable=False),
    Column("inserted", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("unchanged", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("error", Text),
    Column("idempotency_key", Text),
    # A fetch in segments (workers/pipeline/fetch/segment.py)
    Column("fetch_position", JSONB),  # where the next segment starts; NULL: from the top
    Column("fetch_progress", JSONB),  # what the fetch read so far (progress in GET /runs/{id})
    Column("fetch_lease", UUID),  # the one fetch task allowed to write for the run
    Column("fetch_holder", UUID),  # the worker process running it (worker_processes.id)
    Column("fetch_segments", Integer, nullable=False),  # segments that ended
    Column("segment_attempts", Integer, nullable=False),  # deliveries of the current segment
)

raw_chunks = Table(
    "raw_chunks",
    metadata,
    Column("run_id", BigInteger, primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    Column("item_count", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("skipped", Integer, nullable=False),  # rows recognised unchanged before this chunk
    Column("columns", JSONB),  # the header of a chunk of tabular rows stored as values (app/core/raw_format.py)
    Column("claimed_by", UUID),  # the worker process of the last delivery (worker_processes.id)
)

# A heartbeat per worker process (workers/liveness.py): the reconciler re-drives the work of
# a process whose heartbeat stopped.
worker_processes = Table(
    "worker_processes",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("beat_at", DateTime(timezone=True), nullable=False),
)

chunk_ledger = Table(
    "chunk_ledger",
    metadata,
    Column("run_id", BigInteger, primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    Column("fetched", Integer, nullable=False),
    Column("inserted", Integer, nullable=False),
    Column("updated", Integer, nullable=False),
    Column("unchanged", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("max_incremental", JSONB),
    Column("observed_fields", JSONB),
    Column("duration_ms", Integer),
    Column("skipped", Integer, nullable=False),  # of `unchanged`: left out at the fetch stage
    Column("committed_at", DateTime(timezone=True), nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("source", Text, nullable=False),
    # Byte order ("C"): index probes compare with memcmp instead of the locale's strcoll
    # (a quarter faster), and it is the order Python sorts a chunk's keys in.
    Column("external_id", Text(collation="C"), nullable=False),
    Column("title", Text),
    Column("content", Text),
    Column("author", Text),
    Column("url", Text),
    Column("published_at", DateTime(timezone=True)),
    Column("data", JSONB, nullable=False),
    Column("content_hash", LargeBinary, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_run_id", BigInteger),
    # The chunk of last_run_id that wrote the record: a chunk of the same run writes it only
    # when it comes later in the source (workers/pipeline/upsert/records.py).
    Column("last_chunk_no", Integer),
    Column("search", TSVECTOR),
    # Digest of the raw record (and of the code and config that normalised it): a re-run
    # leaves rows whose digest matches out at the fetch stage (workers/pipeline/fetch/unchanged.py).
    Column("raw_digest", LargeBinary),
)

rejected_records = Table(
    "rejected_records",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("run_id", BigInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("chunk_no", Integer, nullable=False),
    Column("line_no", Integer),
    Column("external_id", Text),
    Column("reason", Text, nullable=False),
    Column("field", Text),
    Column("message", Text, nullable=False),
    Column("raw", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

source_stats = Table(
    "source_stats",
    metadata,
    Column("source", Text, primary_key=True),
    Column("records", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
)

schema_fields = Table(
    "schema_fields",
    metadata,
    Column("source", Text, primary_key=True),
    Column("field", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("run_id", BigInteger),
)

drift_events = Table(
    "drift_events",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("source", Text, nullable=False),
    Column("run_id", BigInteger),
    Column("kind", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("old_type", Text),
    Column("new_type", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("source", Text, primary_key=True),
    Column("webhook_id", String(200), primary_key=True),
    Column("run_id", BigInteger),
    Column("accepted", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
