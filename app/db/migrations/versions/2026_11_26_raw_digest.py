"""records.raw_digest, raw_chunks.skipped, chunk_ledger.skipped: unchanged rows skipped at fetch

Revision ID: 2026_11_26_raw_digest
Revises: 2026_11_26_chunk_duration
Create Date: 2026-11-26

`records.raw_digest` is a digest of the raw upstream record a stored record was made
from (and of the code and config that normalised it). A re-run's fetch stage compares
each row's digest with it and leaves unchanged rows out of the raw chunks; `skipped`
counts them, per stored chunk and per committed chunk, so runs still report them as
fetched and unchanged. NULL (or 0) for anything written before this migration: such a
record is simply not recognised until its next write.
"""

from alembic import op

revision = "2026_11_26_raw_digest"
down_revision = "2026_11_26_chunk_duration"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, or a constant default: metadata-only changes, instant on big tables.
    op.execute("ALTER TABLE records ADD COLUMN raw_digest bytea")
    op.execute("ALTER TABLE raw_chunks ADD COLUMN skipped integer NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE chunk_ledger ADD COLUMN skipped integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE chunk_ledger DROP COLUMN skipped")
    op.execute("ALTER TABLE raw_chunks DROP COLUMN skipped")
    op.execute("ALTER TABLE records DROP COLUMN raw_digest")
