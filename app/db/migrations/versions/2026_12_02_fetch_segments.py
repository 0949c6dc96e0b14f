"""runs: a fetch in segments (resume position, lease, progress) and fetch_kept_ids

Revision ID: 2026_12_02_fetch_segments
Revises: 2026_12_01_record_position
Create Date: 2026-12-02

A run's fetch works in bounded segments (workers/pipeline/fetch/segment.py). Each one
commits, with the last chunk it stored, where the next one starts (`fetch_position`),
what a person watching sees (`fetch_progress`), and, in `fetch_kept_ids`, the ids the
run kept so far (workers/pipeline/fetch/repeats.py), which the next segment needs to
flag later copies. `fetch_lease` names the one fetch task allowed to write for the run;
`segment_attempts` counts the deliveries of the current segment (the give-up rule),
`fetch_segments` the segments that ended.
"""

from alembic import op

revision = "2026_12_02_fetch_segments"
down_revision = "2026_12_01_record_position"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns and constant defaults: metadata-only changes, instant on a big table.
    op.execute(
        """
        ALTER TABLE runs
            ADD COLUMN fetch_position jsonb,
            ADD COLUMN fetch_progress jsonb,
            ADD COLUMN fetch_lease uuid,
            ADD COLUMN fetch_segments integer NOT NULL DEFAULT 0,
            ADD COLUMN segment_attempts integer NOT NULL DEFAULT 0
        """
    )
    op.execute(
        """
        CREATE TABLE fetch_kept_ids (
            run_id bigint PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
            kept bytea NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE fetch_kept_ids")
    op.execute(
        """
        ALTER TABLE runs
            DROP COLUMN fetch_position, DROP COLUMN fetch_progress, DROP COLUMN fetch_lease,
            DROP COLUMN fetch_segments, DROP COLUMN segment_attempts
        """
    )
