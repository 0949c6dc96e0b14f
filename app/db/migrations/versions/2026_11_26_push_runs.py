"""push (webhook) runs: an open batching window per source, exempt from the pull rule

Revision ID: 2026_11_26_push_runs
Revises: 2026_11_26_observed_fields
Create Date: 2026-11-26

Pulled sources keep "one queued/running run per source". Pushed deliveries are batched
into a run that stays open for a short window; while an earlier window's run is still
being normalised, a new window may open, but never two open windows for one source.
"""

from alembic import op

revision = "2026_11_26_push_runs"
down_revision = "2026_11_26_observed_fields"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX runs_one_active_per_source")
    op.execute(
        "CREATE UNIQUE INDEX runs_one_active_per_source ON runs (source)"
        " WHERE status IN ('queued', 'running') AND trigger <> 'webhook'"
    )
    op.execute(
        "CREATE UNIQUE INDEX runs_one_open_push_window ON runs (source)"
        " WHERE trigger = 'webhook' AND status = 'running' AND chunks_total IS NULL"
    )
    op.execute("ALTER TABLE webhook_deliveries ADD COLUMN accepted integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE webhook_deliveries DROP COLUMN accepted")
    op.execute("DROP INDEX runs_one_open_push_window")
    op.execute("DROP INDEX runs_one_active_per_source")
    op.execute("CREATE UNIQUE INDEX runs_one_active_per_source ON runs (source) WHERE status IN ('queued', 'running')")
