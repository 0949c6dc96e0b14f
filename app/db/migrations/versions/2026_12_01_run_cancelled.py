"""runs.status may be 'cancelled': a run stopped on request (POST /runs/{id}/cancel)

Revision ID: 2026_12_01_run_cancelled
Revises: 2026_11_26_raw_chunk_columns
Create Date: 2026-12-01
"""

from alembic import op

revision = "2026_12_01_run_cancelled"
down_revision = "2026_11_26_raw_chunk_columns"
branch_labels = None
depends_on = None

_STATUSES = "'queued', 'running', 'succeeded', 'partial', 'failed'"


def upgrade() -> None:
    op.execute("ALTER TABLE runs DROP CONSTRAINT runs_status_check")
    op.execute(f"ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN ({_STATUSES}, 'cancelled'))")


def downgrade() -> None:
    # The older schema has no word for a cancelled run: it stopped before finishing, so failed.
    op.execute(
        "UPDATE runs SET status = 'failed', error = coalesce(error, 'cancelled') WHERE status = 'cancelled'"
    )
    op.execute("ALTER TABLE runs DROP CONSTRAINT runs_status_check")
    op.execute(f"ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN ({_STATUSES}))")
