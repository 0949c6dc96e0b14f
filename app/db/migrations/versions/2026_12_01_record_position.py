"""records.last_chunk_no: where in its run a record was last written

Revision ID: 2026_12_01_record_position
Revises: 2026_12_01_search_prefix
Create Date: 2026-12-01

An id may appear in several chunks of one run (a file holding it twice, an API serving
an updated record on a later page), and chunks commit in any order. With `last_run_id`,
`last_chunk_no` says which copy the stored record is: a chunk of the same run writes the
record only when it comes later in the source (workers/pipeline/upsert/records.py).
NULL for records written before this migration: any chunk may write those.
"""

from alembic import op

revision = "2026_12_01_record_position"
down_revision = "2026_12_01_search_prefix"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a metadata-only change, instant on a big table.
    op.execute("ALTER TABLE records ADD COLUMN last_chunk_no integer")


def downgrade() -> None:
    op.execute("ALTER TABLE records DROP COLUMN last_chunk_no")
