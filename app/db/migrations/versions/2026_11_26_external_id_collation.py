"""records.external_id in byte order (COLLATE "C")

Revision ID: 2026_11_26_external_id_collation
Revises: 2026_11_26_raw_digest
Create Date: 2026-11-26

Every upsert and every unchanged-row probe descends the unique index on
(source, external_id). With the database's locale collation each comparison goes through
strcoll; with "C" it is a memcmp, and a probe costs about a quarter less. Ids are
identifiers, not prose: nothing sorts them for people. Byte order is also the order in
which Python sorts a chunk's keys, so the upsert's lock order is the index order.

The column's type does not change, so the table is not rewritten; the unique index is
rebuilt (it holds an exclusive lock on records for that long: minutes at tens of millions
of rows, so run migrations in a quiet moment).
"""

from alembic import op

revision = "2026_11_26_external_id_collation"
down_revision = "2026_11_26_raw_digest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute('ALTER TABLE records ALTER COLUMN external_id TYPE text COLLATE "C"')


def downgrade() -> None:
    op.execute("ALTER TABLE records ALTER COLUMN external_id TYPE text COLLATE pg_catalog.\"default\"")
