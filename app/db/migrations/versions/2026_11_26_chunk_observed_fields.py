"""chunk_ledger.observed_fields: the field types each chunk saw, for schema drift

Revision ID: 2026_11_26_observed_fields
Revises: 2026_11_26_initial
Create Date: 2026-11-26
"""

from alembic import op

revision = "2026_11_26_observed_fields"
down_revision = "2026_11_26_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE chunk_ledger ADD COLUMN observed_fields jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE chunk_ledger DROP COLUMN observed_fields")
