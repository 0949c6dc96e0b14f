"""chunk_ledger.duration_ms: how long each chunk took, for the chunk duration metric

Revision ID: 2026_11_26_chunk_duration
Revises: 2026_11_26_push_runs
Create Date: 2026-11-26

Measured by the worker from the start of the normalize-and-upsert task to the ledger
write (load, normalize, COPY, upsert), and committed with the chunk. NULL for chunks
committed before this migration. GET /metrics exposes it as ingest_chunk_duration_seconds.
"""

from alembic import op

revision = "2026_11_26_chunk_duration"
down_revision = "2026_11_26_push_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a metadata-only change, instant on a big ledger.
    op.execute("ALTER TABLE chunk_ledger ADD COLUMN duration_ms integer")


def downgrade() -> None:
    op.execute("ALTER TABLE chunk_ledger DROP COLUMN duration_ms")
