"""initial schema: sources, runs, chunk ledger, raw chunks, records, rejects, drift

Revision ID: 2026_11_26_initial
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "2026_11_26_initial"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE sources (
    name          text PRIMARY KEY,
    kind          text NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,
    schedule      text NOT NULL,
    config        jsonb NOT NULL,          -- ${VAR} references unexpanded: never a secret
    paused_reason text,                    -- set when on_drift = "pause" disabled the source
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The incremental checkpoint and the conditional-GET validators of each source.
-- Written only by the transaction that finalises a run.
CREATE TABLE checkpoints (
    source        text PRIMARY KEY,
    value         jsonb,
    etag          text,
    last_modified text,
    file_hash     text,
    run_id        bigint,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    id              bigserial PRIMARY KEY,
    source          text NOT NULL,
    trigger         text NOT NULL,         -- schedule | api | cli | webhook
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'partial', 'failed')),
    config          jsonb NOT NULL,        -- the source config this run executes
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    heartbeat_at    timestamptz,           -- last sign of life of the fetch stage
    chunks_total    integer,               -- NULL until the fetch stage has finished
    fetch_attempts  integer NOT NULL DEFAULT 0,
    fetch_state     jsonb,                 -- validators/checkpoint to apply on success
    fetched         bigint NOT NULL DEFAULT 0,
    inserted        bigint NOT NULL DEFAULT 0,
    updated         bigint NOT NULL DEFAULT 0,
    unchanged       bigint NOT NULL DEFAULT 0,
    rejected        bigint NOT NULL DEFAULT 0,
    error           text,
    idempotency_key text
);
-- One active run per source, enforced by the database (also neutralises a second beat).
CREATE UNIQUE INDEX runs_one_active_per_source ON runs (source) WHERE status IN ('queued', 'running');
CREATE INDEX runs_source_created ON runs (source, id DESC);
CREATE INDEX runs_status ON runs (status);

-- Raw payloads, one row per chunk: the normalize task receives (run_id, chunk_no) only.
CREATE TABLE raw_chunks (
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    chunk_no    integer NOT NULL,
    item_count  integer NOT NULL,
    payload     bytea NOT NULL,            -- orjson-encoded list of raw items
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, chunk_no)
);

-- One row per committed chunk, written in the same transaction as its upsert.
CREATE TABLE chunk_ledger (
    run_id          bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    chunk_no        integer NOT NULL,
    fetched         integer NOT NULL,
    inserted        integer NOT NULL,
    updated         integer NOT NULL,
    unchanged       integer NOT NULL,
    rejected        integer NOT NULL,
    max_incremental jsonb,
    committed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, chunk_no)
);

CREATE TABLE records (
    id            bigserial PRIMARY KEY,
    source        text NOT NULL,
    external_id   text NOT NULL,
    title         text,
    content       text,
    author        text,
    url           text,
    published_at  timestamptz,
    data          jsonb NOT NULL,
    content_hash  bytea NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_run_id   bigint,
    search        tsvector GENERATED ALWAYS AS (
        to_tsvector('english', coalesce(title, '') || ' ' || coalesce(content, '') || ' ' || coalesce(author, ''))
    ) STORED,
    CONSTRAINT records_source_external_id UNIQUE (source, external_id)
);
CREATE INDEX records_search ON records USING gin (search);
CREATE INDEX records_updated_at ON records (updated_at);

CREATE TABLE rejected_records (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL,
    source      text NOT NULL,
    chunk_no    integer NOT NULL,
    line_no     integer,
    external_id text,
    reason      text NOT NULL,
    field       text,
    message     text NOT NULL,
    raw         jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_records_source ON rejected_records (source, id);
CREATE INDEX rejected_records_run ON rejected_records (run_id, id);

-- Counts maintained by the chunk transactions, so /stats never counts the big table.
CREATE TABLE source_stats (
    source   text PRIMARY KEY,
    records  bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0
);

-- The observed field set of each source, for schema drift detection.
CREATE TABLE schema_fields (
    source text NOT NULL,
    field  text NOT NULL,
    type   text NOT NULL,
    run_id bigint,
    PRIMARY KEY (source, field)
);

CREATE TABLE drift_events (
    id         bigserial PRIMARY KEY,
    source     text NOT NULL,
    run_id     bigint,
    kind       text NOT NULL CHECK (kind IN ('added', 'removed', 'type_changed')),
    field      text NOT NULL,
    old_type   text,
    new_type   text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_events_source ON drift_events (source, id);

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash text NOT NULL,
    status_code  integer NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    source      text NOT NULL,
    webhook_id  varchar(200) NOT NULL,
    run_id      bigint,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, webhook_id)
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS webhook_deliveries, idempotency_keys, drift_events, schema_fields,
    source_stats, rejected_records, records, chunk_ledger, raw_chunks, runs, checkpoints, sources;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
