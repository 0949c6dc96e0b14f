"""raw_chunks.columns: the header shared by a chunk of tabular rows

Revision ID: 2026_11_26_raw_chunk_columns
Revises: 2026_11_26_external_id_collation
Create Date: 2026-11-26

A CSV chunk's rows are stored as lists of values, and the column names once per chunk,
here, instead of once per row in every row's JSON object: half the payload to encode,
compress, store and decode. NULL for chunks of whole records (JSON, RSS, webhooks, and
every chunk stored before this migration); app/raw_format.py describes both forms.
"""

from alembic import op

revision = "2026_11_26_raw_chunk_columns"
down_revision = "2026_11_26_external_id_collation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a metadata-only change.
    op.execute("ALTER TABLE raw_chunks ADD COLUMN columns jsonb")


def downgrade() -> None:
    # Chunks stored as values cannot be read without their columns: a downgrade with
    # unfinished runs of tabular sources would strand them, so refuse rather than lose data.
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM raw_chunks WHERE columns IS NOT NULL) THEN"
        " RAISE EXCEPTION 'raw_chunks holds chunks stored as values; finish or delete those runs first';"
        " END IF; END $$"
    )
    op.execute("ALTER TABLE raw_chunks DROP COLUMN columns")
